import json
from pathlib import Path

import pytest

from chatforge.cli import main
from chatforge.config import load_config
from chatforge.errors import ChatforgeError
from chatforge.world.facts import World
from chatforge.world.gold import GoldScorer
from chatforge.world.labeler import SimulatedLabeler
from chatforge.world.stage import Config, run

SMALL = dict(n_people=12, n_towns=4, train_docs=200, val_docs=20, train_demos=100, val_demos=20,
             rl_prompts=50, eval_prompts=40, calibration_prompts=100)
FILES = ["world.json", "labeler.json", "corpus/train.jsonl", "corpus/val.jsonl", "demos/train.jsonl",
         "demos/val.jsonl", "prompts/rl.jsonl", "prompts/eval.jsonl", "eval/facts.jsonl"]
REPO = Path(__file__).resolve().parents[2]


def _read(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def test_run_writes_every_file_and_reloads(tmp_path, capsys):
    out = run(Config(out_dir=tmp_path / "w", **SMALL))
    assert out == tmp_path / "w"
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    assert "corpus/train.jsonl" in capsys.readouterr().out
    assert len(_read(out, "corpus/train.jsonl")) == 200 and len(_read(out, "eval/facts.jsonl")) == 60
    assert len(_read(out, "prompts/eval.jsonl")) == 40 and len(_read(out, "demos/train.jsonl")) == 100
    world = World.load(out / "world.json")
    scorer = GoldScorer.from_dir(out)
    for record in _read(out, "prompts/eval.jsonl") + _read(out, "prompts/rl.jsonl"):
        assert scorer.judge(record["prompt"], "I am not sure.")["kind"] == record["kind"]
    demo_prompts = {d.get("prompt") for d in _read(out, "demos/train.jsonl") + _read(out, "demos/val.jsonl")}
    assert not demo_prompts & {r["prompt"] for r in _read(out, "prompts/eval.jsonl")}
    labeler = SimulatedLabeler.from_dir(out, seed=1)
    assert labeler.noise == json.loads((out / "labeler.json").read_text())["noise"] > 0
    person = world.people[0]
    assert labeler.rank(f"Where does {person.name} live?", ["I am not sure.", f"{person.name} lives in {person.town}."])
    assert load_config(Config, out / "config.yaml") == Config(out_dir=out, **SMALL)


def test_same_seed_same_files(tmp_path):
    first = run(Config(out_dir=tmp_path / "a", **SMALL))
    second = run(Config(out_dir=tmp_path / "b", **SMALL))
    third = run(Config(out_dir=tmp_path / "c", seed=1, **SMALL))
    for name in FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "world.json").read_bytes() != (third / "world.json").read_bytes()


def test_default_size(tmp_path):
    out = run(Config(out_dir=tmp_path))
    train = _read(out, "corpus/train.jsonl")
    words = sum(len(doc["text"].split()) for doc in train)
    assert len(train) == 12000 and 500_000 < words < 700_000


@pytest.mark.parametrize("override,field", [
    ("wrong_share=1.5", "wrong_share"),
    ("verbose_share=0.8", "wrong_share"),        # 0.15 + 0.8 + 0.1 > 1
    ("multi_turn_share=-0.1", "multi_turn_share"),
    ("task_mix={fact: 1, jokes: 1}", "task_mix"),
    ("doc_mix={bio: 0}", "doc_mix"),
    ("n_towns=40", "n_towns"),
    ("labeler_agreement=0.4", "labeler_agreement"),
    ("train_demos=-1", "train_demos"),
])
def test_validate_names_the_field(override, field):
    with pytest.raises(ChatforgeError, match=f"field '{field}'"):
        load_config(Config, None, [override])


def test_config_file_holds_the_defaults():
    assert load_config(Config, REPO / "configs" / "world.yaml") == Config()


def test_cli(tmp_path, capsys):
    overrides = [f"{key}={value}" for key, value in SMALL.items()]
    assert main(["world", f"out_dir={tmp_path}", *overrides]) == 0
    assert (tmp_path / "eval" / "facts.jsonl").exists()
    assert main(["world", "wrong_share=2"]) == 2
    assert "wrong_share" in capsys.readouterr().err
