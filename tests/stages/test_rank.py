import json

from chatforge.cli import main
from chatforge.data.formats import read_comparisons
from chatforge.data.jsonl import read_jsonl


def rank_args(world_dir, base, out_dir, *extra):
    return ["rank", "--config", "configs/rank.yaml", f"model={base}", f"world={world_dir}",
            f"prompts={world_dir / 'prompts' / 'rl.jsonl'}", f"out_dir={out_dir}", "max_prompts=12", "k=3",
            "max_new_tokens=12", "labelers=3", "val_share=0.25", *extra]


def test_rank_writes_comparisons_the_rm_reads_and_is_repeatable(tiny_world_base, tmp_path, capsys):
    world_dir, base = tiny_world_base
    assert main(rank_args(world_dir, base, tmp_path / "a")) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    train, val = read_jsonl(tmp_path / "a" / "train.jsonl"), read_jsonl(tmp_path / "a" / "val.jsonl")
    assert summary["comparisons"] == len(train) + len(val) == summary["pools"] > 0
    assert len(val) == int(summary["comparisons"] * 0.25) and summary["prompts"] == 12 and summary["k"] == 3
    assert summary["agreement_target"] == 0.73 and 0 <= summary["agreement"] <= 1
    comparisons, _ = read_comparisons(tmp_path / "a" / "train.jsonl")  # the RM stage's reader accepts them
    assert all(2 <= len(c.responses) <= 3 and c.labeler in ("sim-0", "sim-1", "sim-2") for c in comparisons)
    assert "rank: " in capsys.readouterr().out
    assert main(rank_args(world_dir, base, tmp_path / "b")) == 0  # the same seed: the same comparisons
    assert read_jsonl(tmp_path / "b" / "train.jsonl") == train


def test_rank_bad_inputs_are_clean_errors(tiny_world_base, tmp_path, capsys):
    world_dir, base = tiny_world_base
    assert main(rank_args(world_dir, base, tmp_path / "out", "k=1")) == 2
    assert "field 'k' must be 2..9" in capsys.readouterr().err
    assert main(rank_args(tmp_path, base, tmp_path / "out")) == 2
    assert "field 'world': no world.json" in capsys.readouterr().err
    assert main(rank_args(world_dir, base, tmp_path / "out", "labeler_agreement=0.4")) == 2
    assert "labeler_agreement" in capsys.readouterr().err
