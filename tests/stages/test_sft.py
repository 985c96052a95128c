import json

from transformers import AutoModelForCausalLM

from chatforge.cli import main
from chatforge.metrics import read_metrics
from chatforge.stages import sft


def sft_config(world_dir, base, out_dir, **overrides):
    fields = dict(model=str(base), train_data=[str(world_dir / "demos" / "train.jsonl")],
                  val_data=[str(world_dir / "demos" / "val.jsonl")], out_dir=str(out_dir), epochs=2,
                  batch_size=4, learning_rate=3e-3, eval_prompts=str(world_dir / "prompts" / "eval.jsonl"),
                  eval_max_prompts=8, gold_world=str(world_dir), eval_max_new_tokens=8, log_every=2, tensorboard=False)
    fields.update(overrides)
    return sft.Config(**fields)


def test_sft_runs_selects_by_score_and_saves_a_plain_folder(tiny_world_base, tmp_path):
    world_dir, base = tiny_world_base
    best = sft.run(sft_config(world_dir, base, tmp_path / "sft"))
    AutoModelForCausalLM.from_pretrained(best)
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert summary["selected_by"] == "score" and summary["judge"] == "gold"
    scores = [e["score"] for e in summary["epochs"]]
    assert len(scores) == 2 and summary["best_epoch"] == 1 + scores.index(max(scores))
    assert all("val_loss" in e for e in summary["epochs"])
    losses = [m["train/loss"] for m in read_metrics(tmp_path / "sft") if "train/loss" in m]
    assert losses and losses[-1] < losses[0]


def test_sft_lora_and_frozen_layers_save_merged_models(tiny_world_base, tmp_path):
    world_dir, base = tiny_world_base
    best = sft.run(sft_config(world_dir, base, tmp_path / "lora", epochs=1, lora_r=4, freeze_layers=1,
                              eval_prompts=""))
    model = AutoModelForCausalLM.from_pretrained(best)
    assert not any("lora" in name for name in model.state_dict())


def test_sft_bad_inputs_are_clean_errors(tiny_world_base, tmp_path, capsys):
    world_dir, base = tiny_world_base
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "response": "ok"}\n{"messages": [{"role": "bot", "content": "x"}]}\n')
    assert main(["sft", f"model={base}", f"train_data=[{bad}]", f"out_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "bot" in err
    assert main(["sft", f"model={world_dir}", f"train_data=[{bad}]"]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_sft_reads_alpaca_and_says_why_nothing_is_left(tiny_world_base, tmp_path, capsys):
    _, base = tiny_world_base
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text('{"instruction": "Where does Borin live?", "input": "", "output": "In Trask."}\n')
    common = ["sft", f"model={base}", f"train_data=[{alpaca}]", "epochs=1", "tensorboard=false"]
    assert main([*common, f"out_dir={tmp_path / 'o'}", "format=alpaca"]) == 0
    assert "sft: train: read 1, kept 1" in capsys.readouterr().out
    # too long for max_len=4 and dropped: the error says so, by reason
    assert main([*common, f"out_dir={tmp_path / 'p'}", "max_len=4", "too_long=drop"]) == 2
    err = capsys.readouterr().err
    assert "sft: no train demonstration left" in err and "skipped 1 (too long: 1)" in err and "max_len=4" in err


def test_sft_select_by_val_loss_or_last_still_scores_each_epoch(tiny_world_base, tmp_path):
    world_dir, base = tiny_world_base
    for select_by in ("val_loss", "last"):
        sft.run(sft_config(world_dir, base, tmp_path / select_by, epochs=3, select_by=select_by))
        summary = json.loads((tmp_path / select_by / "summary.json").read_text())
        losses = [e["val_loss"] for e in summary["epochs"]]
        assert summary["selected_by"] == select_by and all("score" in e for e in summary["epochs"])
        assert summary["best_epoch"] == (1 + losses.index(min(losses)) if select_by == "val_loss" else 3)


def test_sft_select_by_needs_what_it_selects_on(tiny_world_base, tmp_path, capsys):
    world_dir, base = tiny_world_base
    train = world_dir / "demos" / "train.jsonl"
    assert main(["sft", f"model={base}", f"train_data=[{train}]", "select_by=val_loss"]) == 2
    assert "select_by=val_loss needs val_data" in capsys.readouterr().err
    assert main(["sft", f"model={base}", f"train_data=[{train}]", "select_by=score"]) == 2
    assert "select_by=score needs eval_prompts" in capsys.readouterr().err


def test_stop_early_counts_epochs_after_the_best():
    assert not sft.stop_early({"epoch": 5, "best_epoch": 3}, 0)  # 0 = off
    assert not sft.stop_early({"epoch": 4, "best_epoch": 3}, 2)
    assert sft.stop_early({"epoch": 5, "best_epoch": 3}, 2)
    assert not sft.stop_early({"epoch": 0, "best_epoch": None}, 1)


def test_sft_early_stopping_keeps_the_best_epoch_and_says_so(tiny_world_base, tmp_path, capsys):
    world_dir, base = tiny_world_base
    # learning rate 0: every epoch's validation loss equals the first's, which stays the best (ties do not win)
    sft.run(sft_config(world_dir, base, tmp_path / "es", epochs=4, learning_rate=0.0, select_by="val_loss",
                       eval_prompts="", early_stopping_patience=2))
    summary = json.loads((tmp_path / "es" / "summary.json").read_text())
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2, 3] and summary["best_epoch"] == 1
    assert summary["stopped_early"] and "stopped early after epoch 3" in capsys.readouterr().out
    assert main(["sft", f"model={base}", f"train_data=[{world_dir / 'demos' / 'train.jsonl'}]",
                 "select_by=last", "early_stopping_patience=1"]) == 2
    assert "early_stopping_patience needs a select_by" in capsys.readouterr().err
