from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from chatforge.config import config_help, load_config, opt
from chatforge.errors import ChatforgeError


@dataclass
class Inner:
    depth: int = opt(2, "depth")


@dataclass
class Sample:
    name: str = opt("x", "a name")
    steps: int = opt(10, "steps")
    rate: float = opt(0.5, "a rate")
    flag: bool = opt(False, "a flag")
    files: list[str] = opt([], "files")
    mode: Literal["a", "b"] = opt("a", "a mode")
    out: Path = opt(Path("runs"), "a path")
    extra: dict = opt({}, "free mapping")
    inner: Inner = opt(Inner(), "nested")

    def validate(self):
        if self.steps < 0:
            raise ChatforgeError("steps must be >= 0")


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: hello\nsteps: 3\nrate: 1\nfiles: [a, b]\ninner: {depth: 4}\n")
    cfg = load_config(Sample, path, ["steps=7", "flag=true", "mode=b", "extra.k=1", "inner.depth=5"])
    assert cfg.name == "hello" and cfg.steps == 7 and cfg.rate == 1.0 and isinstance(cfg.rate, float)
    assert load_config(Sample, None, ["rate=1e-3"]).rate == 0.001
    assert cfg.flag is True and cfg.files == ["a", "b"] and cfg.mode == "b"
    assert cfg.extra == {"k": 1} and cfg.inner.depth == 5 and cfg.out == Path("runs")


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: hello\n\nstesp: 3\n")
    with pytest.raises(ChatforgeError, match=r"c.yaml:3: unknown field 'stesp'.*did you mean 'steps'"):
        load_config(Sample, path)


def test_wrong_type_from_command_line():
    with pytest.raises(ChatforgeError, match="command line: field 'steps': expected an integer"):
        load_config(Sample, None, ["steps=many"])
    with pytest.raises(ChatforgeError, match="expected one of"):
        load_config(Sample, None, ["mode=c"])
    with pytest.raises(ChatforgeError, match="not key=value"):
        load_config(Sample, None, ["steps"])


def test_validate_runs_and_bad_yaml(tmp_path):
    with pytest.raises(ChatforgeError, match="steps must be"):
        load_config(Sample, None, ["steps=-1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ChatforgeError, match="bad.yaml:.*invalid YAML"):
        load_config(Sample, bad)
    with pytest.raises(ChatforgeError, match="does not exist"):
        load_config(Sample, tmp_path / "missing.yaml")


def test_help_lists_fields():
    text = config_help(Sample)
    assert "steps (int, default 10)" in text and "a rate" in text


@dataclass
class Prompted:
    prompt: str | list[str] | None = opt(None, "prompt text")
    mapping: dict = opt({}, "free mapping")


def test_command_line_text_stays_text():
    assert load_config(Prompted, None, ["prompt=Q: hi"]).prompt == "Q: hi"
    assert load_config(Prompted, None, ["prompt=yes"]).prompt == "yes"
    assert load_config(Prompted, None, ["prompt=[a, b]"]).prompt == ["a", "b"]
    assert load_config(Prompted, None, ["mapping.depth=2", "mapping.on=true"]).mapping == {"depth": 2, "on": True}


@dataclass
class Renamed:
    discount: float = opt(1.0, "the discount")
    steps: int = opt(1, "steps")
    extra: dict = opt({}, "free mapping")

    RENAMED = {"gamma": "discount", "n": "extra.n"}


def test_an_old_key_still_loads_with_a_warning_naming_where_it_was(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 2\ngamma: 0.9\n")
    assert load_config(Renamed, path).discount == 0.9
    err = capsys.readouterr().err
    assert f"warning: {path}:2: 'gamma' is the old name of 'discount'; write 'discount' instead" in err
    cfg = load_config(Renamed, None, ["gamma=0.5", "n=3"])  # on the command line too; a new name may be dotted
    assert cfg.discount == 0.5 and cfg.extra == {"n": 3}
    assert "command line: 'n' is the old name of 'extra.n'" in capsys.readouterr().err
    assert load_config(Renamed, path, ["discount=0.7"]).discount == 0.7  # the command line still wins
    assert load_config(Renamed, path, {"gamma": 0.8}).discount == 0.8
    assert "old names still read (with a warning): gamma -> discount, n -> extra.n" in config_help(Renamed)


def test_an_old_key_beside_its_new_name_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("discount: 0.9\ngamma: 0.9\n")
    with pytest.raises(ChatforgeError, match=r"c.yaml:2: 'gamma' is the old name of 'discount', which the file sets"):
        load_config(Renamed, path)
    with pytest.raises(ChatforgeError, match="field 'discount': expected a number"):
        load_config(Renamed, None, ["gamma=[1]"])


def test_ppo_reads_its_old_gamma_key_as_discount(tmp_path, capsys):
    from chatforge.stages import ppo

    assert load_config(ppo.Config, "configs/ppo_tiny.yaml", validate=False).discount == 1.0
    assert "warning" not in capsys.readouterr().err  # the shipped config uses the new name
    old = tmp_path / "ppo_old.yaml"
    old.write_text("steps: 3\ngamma: 0.99\n")
    assert load_config(ppo.Config, old, validate=False).discount == 0.99
    assert f"{old}:2: 'gamma' is the old name of 'discount'" in capsys.readouterr().err
