import math

import pytest
import torch
from safetensors.torch import load_file

from chatforge.cli import main
from chatforge.data.jsonl import write_jsonl
from chatforge.errors import ChatforgeError
from chatforge.guards import NonFiniteGuard, is_out_of_memory, out_of_memory_advice
from chatforge.metrics import read_metrics
from chatforge.stages import pretrain, sft


class NanGradient(torch.autograd.Function):
    """Identity forward (a finite loss), NaN backward: a gradient that blew up under a loss that did not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def poison(real_loss, bad_calls: set, kind: str):
    """Wrap a stage's loss function so its calls numbered in `bad_calls` (from 1) go non-finite."""
    calls = {"n": 0}

    def loss_fn(*args, **kwargs):
        calls["n"] += 1
        result = real_loss(*args, **kwargs)
        if calls["n"] not in bad_calls:
            return result
        loss, *rest = result if isinstance(result, tuple) else (result,)  # (loss, stats) from losses.py's PPO terms
        loss = loss * float("inf") if kind == "loss" else NanGradient.apply(loss)
        return (loss, *rest) if rest else loss
    return loss_fn


def test_guard_skips_resets_and_stops_after_a_run_of_non_finite_steps(tmp_path, capsys):
    guard = NonFiniteGuard("sft", tmp_path, limit=3)
    assert guard.step_ok(0, 1.0, torch.tensor(2.0))
    assert not guard.step_ok(1, float("nan"), torch.tensor(2.0))
    assert not guard.step_ok(1, 1.0, torch.tensor([1.0, float("inf")]))  # one model of several blew up
    assert guard.step_ok(1, 1.0, torch.tensor(1.0)) and guard.in_a_row == 0 and guard.skipped == 2
    err = capsys.readouterr().err
    assert "step 2: non-finite loss" in err and "step 2: non-finite gradient" in err
    for step in (2, 3):
        assert not guard.step_ok(step, math.inf, 1.0)
    with pytest.raises(ChatforgeError, match="3 steps in a row.*No checkpoint was written yet"):
        guard.step_ok(4, math.nan, 1.0)


def pretrain_args(toy_corpus, toy_tokenizer_dir, out_dir, *extra):
    return ["pretrain", f"corpus=[{toy_corpus[0]}]", f"tokenizer={toy_tokenizer_dir}", f"out_dir={out_dir}",
            "model_overrides={num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2}",
            "seq_len=16", "batch_size=2", "warmup_steps=1", "log_every=1", "save_every=2", "tensorboard=false",
            "device=cpu", "num_threads=1", *extra]


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_pretrain_skips_non_finite_steps_and_keeps_finite_weights(toy_corpus, toy_tokenizer_dir, tmp_path,
                                                                  monkeypatch, capsys, kind):
    monkeypatch.setattr(pretrain, "lm_loss", poison(pretrain.lm_loss, {3, 4}, kind))
    assert main(pretrain_args(toy_corpus, toy_tokenizer_dir, tmp_path / "pt", "max_steps=5")) == 0
    assert f"non-finite {kind}, step skipped" in capsys.readouterr().err
    metrics = read_metrics(tmp_path / "pt")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert all(math.isfinite(m["train/loss"]) for m in metrics)
    assert metrics[-1]["train/tokens_seen"] == 5 * 2 * 16  # skipped steps are not counted as trained
    weights = load_file(tmp_path / "pt" / "final" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_pretrain_stops_on_five_non_finite_steps_naming_the_last_good_checkpoint(toy_corpus, toy_tokenizer_dir,
                                                                                 tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pretrain, "lm_loss", poison(pretrain.lm_loss, set(range(3, 100)), "gradient"))
    assert main(pretrain_args(toy_corpus, toy_tokenizer_dir, tmp_path / "pt", "max_steps=10")) == 2
    err = capsys.readouterr().err
    assert "pretrain: 5 steps in a row had a non-finite loss or gradient" in err and "Traceback" not in err
    assert f"last good checkpoint is {tmp_path / 'pt' / 'checkpoints' / 'step_0000002'}" in err


def test_sft_skips_a_non_finite_gradient(tiny_world_base, tmp_path, monkeypatch, capsys):
    world_dir, base = tiny_world_base
    monkeypatch.setattr(sft, "batch_loss", poison(sft.batch_loss, {2}, "gradient"))
    sft.run(sft.Config(model=str(base), train_data=[str(world_dir / "demos" / "train.jsonl")],
                       out_dir=str(tmp_path / "sft"), epochs=1, batch_size=8, log_every=1, tensorboard=False,
                       device="cpu", num_threads=1))
    assert "sft: step 2: non-finite gradient, step skipped" in capsys.readouterr().err
    losses = [m["train/loss"] for m in read_metrics(tmp_path / "sft") if "train/loss" in m]
    assert losses and all(math.isfinite(x) for x in losses)


def test_out_of_memory_names_the_settings_to_lower(toy_corpus, toy_tokenizer_dir, tmp_path, monkeypatch, capsys):
    def run_out_of_memory(cfg):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pretrain, "run", run_out_of_memory)
    code = main(pretrain_args(toy_corpus, toy_tokenizer_dir, tmp_path / "pt", "batch_size=64"))
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err
    assert "pretrain: the accelerator ran out of memory" in err
    for setting in ("batch_size=64", "seq_len=16", "dtype='auto'", "grad_accum"):
        assert setting in err, setting
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory")) and not is_out_of_memory(ValueError("x"))
    assert "max_new_tokens=48" in out_of_memory_advice("ppo", type("Cfg", (), {"max_new_tokens": 48})())


def test_rm_and_ppo_skip_non_finite_steps(tiny_world_base, tmp_path, monkeypatch, capsys):
    """The same guard in the RM and PPO loops: a poisoned loss skips its update and the run goes on."""
    import random

    from chatforge.models.io import load_tokenizer, save_hf_folder
    from chatforge.models.reward import build_reward_model
    from chatforge.stages import ppo, rm

    world_dir, base = tiny_world_base
    rng = random.Random(0)
    words = "the cat sat on a mat and ran to the big red house".split()
    data = tmp_path / "comparisons.jsonl"
    write_jsonl(data, [{"prompt": " ".join(rng.sample(words, 4)),
                        "responses": [" ".join(rng.sample(words, 5)) for _ in range(2)]} for _ in range(16)])
    monkeypatch.setattr(rm, "ranking_loss", poison(rm.ranking_loss, {2}, "gradient"))
    rm.run(rm.Config(model=str(base), train_data=[str(data)], out_dir=str(tmp_path / "rm"), batch_prompts=4,
                     log_every=1, tensorboard=False, device="cpu", num_threads=1))
    assert "rm: step 2: non-finite gradient, step skipped" in capsys.readouterr().err
    steps = [m["step"] for m in read_metrics(tmp_path / "rm") if "train/loss" in m]
    assert steps == [1, 2, 3]  # 4 batches, one skipped

    tokenizer = load_tokenizer(base)
    critic = build_reward_model(base, tokenizer.pad_token_id)
    torch.nn.init.normal_(critic.score.weight, std=0.3)
    rm_dir = save_hf_folder(critic, tokenizer, tmp_path / "rm_random")
    monkeypatch.setattr(ppo, "value_loss", poison(ppo.value_loss, {1}, "loss"))
    final = ppo.run(ppo.Config(policy=str(base), reward_model=str(rm_dir), out_dir=str(tmp_path / "ppo"),
                               prompts=str(world_dir / "prompts" / "rl.jsonl"), steps=2, rollout_batch=4,
                               minibatch_size=4, ppo_epochs=1, max_new_tokens=8, tensorboard=False, device="cpu",
                               num_threads=1))
    assert "ppo: step 1: non-finite loss, step skipped" in capsys.readouterr().err
    assert all(torch.isfinite(t).all() for t in load_file(final / "model.safetensors").values())
