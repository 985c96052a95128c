import json

import torch
from transformers import AutoModelForCausalLM

from chatforge.metrics import read_metrics
from chatforge.stages import pretrain


def make_cfg(toy_corpus, toy_tokenizer_dir, out_dir, **overrides):
    fields = dict(corpus=[str(toy_corpus[0])], val_corpus=[str(toy_corpus[1])], tokenizer=str(toy_tokenizer_dir),
                  out_dir=str(out_dir), model_preset="tiny", model_overrides={"num_hidden_layers": 2},
                  seq_len=32, batch_size=8, max_steps=30, warmup_steps=5, eval_every=15, save_every=10,
                  log_every=5, tensorboard=False)
    fields.update(overrides)
    return pretrain.Config(**fields)


def test_loss_falls_and_final_folder_loads(toy_corpus, toy_tokenizer_dir, tmp_path):
    final = pretrain.run(make_cfg(toy_corpus, toy_tokenizer_dir, tmp_path / "run"))
    model = AutoModelForCausalLM.from_pretrained(final)  # a plain HF folder, nothing chatforge-specific
    assert model.config.num_hidden_layers == 2
    metrics = read_metrics(tmp_path / "run")
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    vals = [m["val/loss"] for m in metrics if "val/loss" in m]
    assert losses[-1] < losses[0] - 1.0
    assert len(vals) == 2 and vals[-1] < 4.0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["step"] == 30 and summary["tokens_seen"] == 30 * 8 * 32
    card = (final / "README.md").read_text()
    assert "- \"pretrain\"" in card and "| tokens_seen | 7680 |" in card


def test_resume_continues_from_the_newest_checkpoint(toy_corpus, toy_tokenizer_dir, tmp_path):
    """Stopping at step 20 and resuming to 30 gives the same weights as one run to 30."""
    full = pretrain.run(make_cfg(toy_corpus, toy_tokenizer_dir, tmp_path / "full"))
    # a run with the same schedule (max_steps=30) that is cut off after its step-20 checkpoint
    cut = tmp_path / "cut"
    pretrain.run(make_cfg(toy_corpus, toy_tokenizer_dir, cut))
    import shutil
    shutil.rmtree(cut / "checkpoints" / "step_0000030")
    shutil.rmtree(cut / "final")
    resumed = pretrain.run(make_cfg(toy_corpus, toy_tokenizer_dir, cut))
    a = AutoModelForCausalLM.from_pretrained(full).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_continue_from_an_hf_folder(toy_corpus, toy_tokenizer_dir, tmp_path):
    first = pretrain.run(make_cfg(toy_corpus, toy_tokenizer_dir, tmp_path / "a", max_steps=5, save_every=0))
    second = pretrain.run(make_cfg(toy_corpus, toy_tokenizer_dir, tmp_path / "b", init_from=str(first),
                                   tokenizer="", max_steps=5, save_every=0))
    assert AutoModelForCausalLM.from_pretrained(second).config.num_hidden_layers == 2
