"""Kill tests: a run killed with SIGKILL mid-run and rerun with the same command gives exactly the losses of a
run never interrupted (CPU, one thread). The killed run is a real process (`python -m chatforge.cli`); the
uninterrupted run (while it runs) and the rerun are `chatforge.cli.main` in this process."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from chatforge.checkpoint import latest_checkpoint
from chatforge.cli import main
from chatforge.metrics import read_metrics
from chatforge.models.io import load_tokenizer, save_hf_folder
from chatforge.models.reward import build_reward_model

pytestmark = pytest.mark.slow


def logged_steps(run_dir) -> list[int]:
    """Steps in metrics.jsonl so far; a line being written (no newline yet) is not read."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line)["step"] for line in text[:text.rfind("\n") + 1].splitlines() if line.strip()]


def start_killer(args, run_dir, after_checkpoint: int, timeout: float = 300.0):
    """Start the CLI in a process, and a thread that SIGKILLs it once a checkpoint at or after `after_checkpoint`
    is complete and a later step is logged (mid-run). Returns (process, thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")  # a file, not a pipe that could fill and stall it
    proc = subprocess.Popen([sys.executable, "-m", "chatforge.cli", *args], env=env, stdout=log, stderr=log)

    def watch():
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            saved = [int(p.parent.name.split("_")[1]) for p in run_dir.glob("checkpoints/step_*/manifest.json")
                     if not p.parent.name.endswith((".tmp", ".old"))]
            if saved and max(saved) >= after_checkpoint and max(logged_steps(run_dir), default=0) > max(saved):
                os.kill(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return proc, thread


def series(run_dir, key) -> list:
    return [(m["step"], m[key]) for m in read_metrics(run_dir) if key in m]


def check_kill_and_resume(args, tmp_path, capsys, after_checkpoint: int, keys: list[str]) -> dict:
    """Run `args` killed mid-run and rerun, and (meanwhile, in this process) uninterrupted; the metrics `keys`
    must be equal step for step. Returns the train_state.json the rerun resumed from."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    proc, killer = start_killer([*args, f"out_dir={cut}"], cut, after_checkpoint)
    assert main([*args, f"out_dir={whole}"]) == 0
    killer.join()
    code = proc.wait()
    log = (tmp_path / "cut.log").read_text()[-2000:]
    assert code == -signal.SIGKILL, f"the run was not killed mid-run (exit {code}): {log}"
    assert not (cut / "final").exists()
    resumed_state = json.loads((latest_checkpoint(cut) / "train_state.json").read_text())
    killed_at = max(logged_steps(cut))
    assert killed_at > resumed_state["step"]  # steps past the checkpoint died with the process: they are redone

    capsys.readouterr()
    assert main([*args, f"out_dir={cut}"]) == 0  # the same command again: it resumes
    assert "resuming" in capsys.readouterr().out
    for key in keys:
        expected, got = series(whole, key), series(cut, key)
        assert any(step > resumed_state["step"] for step, _ in expected), key
        assert got == expected, key  # bitwise: same data, weights, optimizer moments and RNG after the resume
    return resumed_state


def test_pretrain_killed_mid_epoch_resumes_exactly(toy_corpus, toy_tokenizer_dir, tmp_path, capsys):
    args = ["pretrain", f"corpus=[{toy_corpus[0]}]", f"tokenizer={toy_tokenizer_dir}",
            "model_overrides={num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2}",
            "seq_len=32", "batch_size=4", "max_steps=24", "warmup_steps=2", "log_every=1", "save_every=4",
            "shuffle_buffer=64", "eval_every=0", "tensorboard=false", "device=cpu", "num_threads=1"]
    check_kill_and_resume(args, tmp_path, capsys, 4, ["train/loss", "train/grad_norm", "train/lr"])


def test_sft_killed_mid_epoch_resumes_exactly(tiny_world_base, tmp_path, capsys):
    world_dir, base = tiny_world_base
    args = ["sft", f"model={base}", f"train_data=[{world_dir / 'demos' / 'train.jsonl'}]",
            f"val_data=[{world_dir / 'demos' / 'val.jsonl'}]", "epochs=2", "batch_size=4", "learning_rate=3e-3",
            "log_every=1", "save_every=3", "tensorboard=false", "device=cpu", "num_threads=1"]
    resumed_state = check_kill_and_resume(args, tmp_path, capsys, 3, ["train/loss", "train/grad_norm", "epoch/val_loss"])
    assert resumed_state["epoch"] == 0 and resumed_state["epoch_rows"] > 0  # resumed inside the first epoch


@pytest.fixture(scope="module")
def random_reward_model(tiny_world_base, tmp_path_factory):
    """A reward model on the tiny base model with a random head (so rewards vary and PPO has a signal)."""
    _, base = tiny_world_base
    tokenizer = load_tokenizer(base)
    torch.manual_seed(0)
    model = build_reward_model(base, tokenizer.pad_token_id)
    torch.nn.init.normal_(model.score.weight, std=0.3)
    return save_hf_folder(model, tokenizer, tmp_path_factory.mktemp("kill_rm") / "rm")


def test_ppo_killed_mid_run_resumes_exactly(tiny_world_base, random_reward_model, tmp_path, capsys):
    world_dir, base = tiny_world_base
    args = ["ppo", f"policy={base}", f"reward_model={random_reward_model}",
            f"prompts={world_dir / 'prompts' / 'rl.jsonl'}", f"pretrain_data=[{world_dir / 'corpus' / 'train.jsonl'}]",
            "steps=6", "rollout_batch=8", "minibatch_size=4", "ppo_epochs=2", "max_new_tokens=12",
            "learning_rate=1e-3", "critic_learning_rate=1e-3", "ptx_coef=0.5", "ptx_batch_size=2", "ptx_seq_len=64",
            "target_kl=0.5", "save_every=2", "tensorboard=false", "device=cpu", "num_threads=1"]
    check_kill_and_resume(args, tmp_path, capsys, 2, ["rollout/reward", "rollout/kl", "rollout/kl_coef", "train/policy_loss",
                                              "train/value_loss", "train/ptx_loss", "train/approx_kl"])
