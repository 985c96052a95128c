import hashlib
import json
from pathlib import Path

import pytest

from chatforge.cli import main
from chatforge.config import load_config
from chatforge.data.jsonl import read_jsonl
from chatforge.errors import ChatforgeError
from chatforge.world.facts import World
from chatforge.world.gold import GoldScorer
from chatforge.world.labeler import SimulatedLabeler
from chatforge.stages.world import Config, run

SMALL = dict(n_people=12, n_towns=4, train_docs=200, val_docs=20, train_demos=100, val_demos=20,
             rl_prompts=50, eval_prompts=40, calibration_prompts=100)
FILES = ["world.json", "labeler.json", "corpus/train.jsonl", "corpus/val.jsonl", "demos/train.jsonl",
         "demos/val.jsonl", "prompts/rl.jsonl", "prompts/eval.jsonl", "eval/facts.jsonl"]
REPO = Path(__file__).resolve().parents[2]


def _read(out: Path, name: str) -> list[dict]:
    return read_jsonl(out / name)


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
    demo_prompts = {json.dumps(d["messages"][:-1] if "messages" in d else d["prompt"])
                    for d in _read(out, "demos/train.jsonl") + _read(out, "demos/val.jsonl")}
    assert not demo_prompts & {json.dumps(r["prompt"]) for r in _read(out, "prompts/eval.jsonl")}
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


@pytest.mark.slow
def test_default_size(tmp_path):
    """The default world, full size (the demo's): about 640k words of corpus."""
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
    ("version=3", "version"),
    ("task_mix={fact: 1, followup: 1}", "task_mix"),    # follow-ups need version 2
    ("demo_behaviour={jokes: {wrong: 0.1}}", "demo_behaviour"),
    ("demo_behaviour={harmful: {hallucinate: 0.1}}", "demo_behaviour"),
    ("web_behaviour={fact: {wrong: 0.8, verbose: 0.8}}", "web_behaviour"),
    ("labeler_leanings=[{loud: 1}]", "labeler_leanings"),
    ("n_strangers=2", "n_strangers"),
])
def test_validate_names_the_field(override, field):
    overrides = [override] + (["version=1"] if "followup" in override else [])
    with pytest.raises(ChatforgeError, match=f"field '{field}'"):
        load_config(Config, None, overrides)


def test_config_file_holds_the_defaults():
    from_file, defaults = load_config(Config, REPO / "configs" / "world.yaml"), Config()
    # the file spells out the version-2 defaults that the dataclass leaves empty ("the version's default")
    assert (from_file.mix, from_file.behaviour(), from_file.behaviour(web=True), from_file.leanings) == \
        (defaults.mix, defaults.behaviour(), defaults.behaviour(web=True), defaults.leanings)
    spelled = ("task_mix", "demo_behaviour", "web_behaviour", "labeler_leanings")
    assert {k: v for k, v in vars(from_file).items() if k not in spelled} == \
        {k: v for k, v in vars(defaults).items() if k not in spelled}


def test_version_1_files_are_what_they_always_were(tmp_path):
    """configs/world_v1.yaml writes, byte for byte, the files the world wrote before version 2 existed
    (digest taken with the code of that time, SMALL sizes)."""
    cfg = load_config(Config, REPO / "configs" / "world_v1.yaml", {"out_dir": str(tmp_path), **SMALL})
    out = run(cfg)
    digest = hashlib.sha256(b"".join((out / name).read_bytes() for name in FILES)).hexdigest()
    assert digest == "14ab87ae064cc86e8e96c004af971766053805ada05b82aaaf96156d87106a7b"
    assert "version" not in json.loads((out / "world.json").read_text())


def test_version_2_writes_strangers_and_leanings(tmp_path):
    out = run(Config(out_dir=tmp_path, **SMALL))
    world = World.load(out)
    assert world.version == 2 and len(world.strangers) == 30
    assert not {p.name for p in world.people} & set(world.strangers)
    labeler = json.loads((out / "labeler.json").read_text())
    assert labeler["leanings"] == Config().leanings and 0.1 < labeler["noise"] < 0.4
    kinds = {r["kind"] for r in _read(out, "prompts/eval.jsonl")}
    assert kinds == set(Config().mix)


def test_cli(tmp_path, capsys):
    overrides = [f"{key}={value}" for key, value in SMALL.items()]
    assert main(["world", f"out_dir={tmp_path}", *overrides]) == 0
    assert (tmp_path / "eval" / "facts.jsonl").exists()
    assert main(["world", "wrong_share=2"]) == 2
    assert "wrong_share" in capsys.readouterr().err
