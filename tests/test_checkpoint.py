import json
import random

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from chatforge import checkpoint
from chatforge.checkpoint import (MANIFEST_FILE, latest_checkpoint, list_checkpoints, load_trainer_state,
                                  save_checkpoint, verify_checkpoint)
from chatforge.cli import main
from chatforge.data.jsonl import write_jsonl
from chatforge.errors import ChatforgeError
from chatforge.metrics import read_metrics


def tiny_model():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16))


def trained_pair():
    """A model, its AdamW and scheduler after one step (so the optimizer has moments to restore)."""
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def save(run_dir, step, keep_last=2, **kwargs):
    model, optimizer, scheduler = trained_pair()
    return save_checkpoint(run_dir, step, model, None, {"optimizer": optimizer, "scheduler": scheduler},
                           {"blocks_seen": step * 8, "kl_coef": 0.05}, keep_last, **kwargs)


def cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    folder = save(tmp_path, 3)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {MANIFEST_FILE}
    assert set(manifest["files"]) == on_disk
    assert {"model.safetensors", "config.json", "trainer_state.pt", "rng_rank0.pt", "train_state.json"} <= on_disk
    assert manifest["files"]["model.safetensors"]["bytes"] == (folder / "model.safetensors").stat().st_size
    assert len(manifest["files"]["model.safetensors"]["sha256"]) == 64
    assert verify_checkpoint(folder) == []
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # written in a temp folder, then renamed


def test_resume_restores_optimizer_scheduler_counters_and_every_rng(tmp_path):
    model, optimizer, scheduler = trained_pair()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    folder = save_checkpoint(tmp_path, 7, model, None, {"optimizer": optimizer, "scheduler": scheduler},
                             {"blocks_seen": 56, "kl_coef": 0.05})
    expected = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)  # what a fresh process would do first

    _, fresh_opt, fresh_sched = trained_pair()
    fresh_opt.state.clear()
    state = load_trainer_state(folder, {"optimizer": fresh_opt, "scheduler": fresh_sched})
    assert state == {"step": 7, "blocks_seen": 56, "kl_coef": 0.05}
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(2), expected[2])
    assert fresh_sched.last_epoch == scheduler.last_epoch
    for saved, loaded in zip(optimizer.state.values(), fresh_opt.state.values()):
        torch.testing.assert_close(saved["exp_avg"], loaded["exp_avg"], rtol=0, atol=0)


def test_each_rank_restores_its_own_rng_stream(tmp_path, monkeypatch, capsys):
    # what gather_rng_states() returns under torchrun with two ranks: one state per rank
    torch.manual_seed(10)
    rank0 = checkpoint.rng_state()
    torch.manual_seed(11)
    rank1 = checkpoint.rng_state()
    folder = save(tmp_path, 1, rng_states=[rank0, rank1])
    assert (folder / "rng_rank0.pt").exists() and (folder / "rng_rank1.pt").exists()
    model, optimizer, scheduler = trained_pair()
    for rank, seed in ((0, 10), (1, 11)):
        monkeypatch.setenv("RANK", str(rank))
        load_trainer_state(folder, {"optimizer": optimizer, "scheduler": scheduler})
        got = torch.rand(3)
        torch.manual_seed(seed)
        assert torch.equal(got, torch.rand(3)), rank
    monkeypatch.setenv("RANK", "2")  # a rank the checkpoint has no stream for: said, not hidden
    load_trainer_state(folder, {"optimizer": optimizer, "scheduler": scheduler})
    assert "no RNG state for rank 2" in capsys.readouterr().err


def test_a_truncated_checkpoint_is_reported_and_the_previous_one_used(tmp_path, capsys):
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    cut_in_half(newest / "model.safetensors")
    assert "model.safetensors has" in verify_checkpoint(newest)[0]
    assert latest_checkpoint(tmp_path).name == "step_0000001"
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is damaged: model.safetensors has" in err and "resuming from" in err
    assert newest.exists()  # reported, not deleted: the next save replaces it


@pytest.mark.parametrize("damage", ["changed", "missing", "manifest", "manifest_entry"])
def test_changed_missing_files_and_a_broken_manifest_are_damage(tmp_path, damage):
    folder = save(tmp_path, 1)
    if damage == "changed":  # same size, other bytes: only the checksum sees it
        data = bytearray((folder / "trainer_state.pt").read_bytes())
        data[-40] ^= 0xFF
        (folder / "trainer_state.pt").write_bytes(bytes(data))
    elif damage == "missing":
        (folder / "rng_rank0.pt").unlink()
    elif damage == "manifest":
        cut_in_half(folder / MANIFEST_FILE)
    else:  # valid JSON of the wrong shape
        (folder / MANIFEST_FILE).write_text(json.dumps({"files": {"model.safetensors": 12}}))
    assert verify_checkpoint(folder) != []
    with pytest.raises(ChatforgeError, match="every checkpoint is damaged.*resume=false"):
        latest_checkpoint(tmp_path)


def test_a_checkpoint_without_manifest_from_older_versions_still_resumes(tmp_path):
    folder = save(tmp_path, 4)
    (folder / MANIFEST_FILE).unlink()
    assert latest_checkpoint(tmp_path) == folder


def test_saving_keeps_the_last_n_and_drops_checkpoints_past_the_new_step(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000002", "step_0000003"]
    save(tmp_path, 1, keep_last=3)  # a run that went back to step 1 (resume=false, or a damaged newest one)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000001"]
    for step in (2, 3, 4):
        save(tmp_path, step, keep_last=5)
    assert len(list_checkpoints(tmp_path)) == 4
    cut_in_half(tmp_path / "checkpoints" / "step_0000002" / "trainer_state.pt")
    save(tmp_path, 9, keep_last=5)  # a fallback with a file cut short is no fallback: it goes
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000001", "step_0000003", "step_0000004",
                                                            "step_0000009"]


def test_pretrain_resumes_from_the_previous_checkpoint_when_the_newest_is_cut(toy_corpus, toy_tokenizer_dir,
                                                                              tmp_path, capsys):
    """The stage side: a cut newest checkpoint is reported, the one before is resumed, the run completes."""
    run_dir = tmp_path / "pt"
    args = ["pretrain", f"corpus=[{toy_corpus[0]}]", f"tokenizer={toy_tokenizer_dir}", f"out_dir={run_dir}",
            "model_overrides={num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64, num_attention_heads: 2}",
            "seq_len=16", "batch_size=2", "warmup_steps=1", "log_every=1", "save_every=2", "keep_last=2",
            "tensorboard=false", "device=cpu", "num_threads=1"]
    assert main(args + ["max_steps=4"]) == 0
    cut_in_half(run_dir / "checkpoints" / "step_0000004" / "model.safetensors")
    capsys.readouterr()
    assert main(args + ["max_steps=6"]) == 0
    captured = capsys.readouterr()
    assert "step_0000004 is damaged: model.safetensors" in captured.err
    assert "resuming from" in captured.out and "step_0000002" in captured.out
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]  # steps 3-4 redone once
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_0000004", "step_0000006"]
    assert all(verify_checkpoint(p) == [] for p in list_checkpoints(run_dir))


class Crash(Exception):
    """Stands in for a machine dying mid-run."""


def test_rm_resumes_mid_epoch_exactly(tiny_world_base, tmp_path, monkeypatch):
    """RM checkpoints every save_every steps; a run that dies after step 5 and is rerun matches one never stopped."""
    from chatforge.stages import rm

    _, base = tiny_world_base
    words = "the cat sat on a mat and ran to the big red house".split()
    rng = random.Random(0)
    data = tmp_path / "comparisons.jsonl"
    write_jsonl(data, [{"prompt": " ".join(rng.sample(words, 4)),
                        "responses": [" ".join(rng.sample(words, 5)) for _ in range(3)]} for _ in range(40)])

    def run(out_dir):
        return rm.run(rm.Config(model=str(base), train_data=[str(data)], out_dir=str(out_dir), epochs=2,
                                batch_prompts=4, learning_rate=3e-3, log_every=1, save_every=3, tensorboard=False,
                                device="cpu", num_threads=1))

    run(tmp_path / "whole")
    real_loss, calls = rm.ranking_loss, {"n": 0}

    def dies_after_step_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise Crash
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(rm, "ranking_loss", dies_after_step_5)
    with pytest.raises(Crash):
        run(tmp_path / "cut")
    resumed_from = latest_checkpoint(tmp_path / "cut")
    assert json.loads((resumed_from / "train_state.json").read_text())["epoch_rows"] > 0  # mid-epoch
    monkeypatch.setattr(rm, "ranking_loss", real_loss)
    run(tmp_path / "cut")
    for key in ("train/loss", "train/grad_norm"):
        expected = [(m["step"], m[key]) for m in read_metrics(tmp_path / "whole") if key in m]
        assert [(m["step"], m[key]) for m in read_metrics(tmp_path / "cut") if key in m] == expected, key
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("whole", "cut")]
    assert summaries[0]["reward_bias"] == summaries[1]["reward_bias"]
