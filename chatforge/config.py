"""YAML file + `key=value` overrides -> a stage's config dataclass, validated before anything loads.

Each stage declares its config as a dataclass whose fields carry a help text (`opt(default, "help")`).
Unknown keys, wrong types and bad values are reported with the file, the line and the field.

A field that was renamed keeps its old name readable for a while: the dataclass lists it in a class
attribute `RENAMED = {"old_name": "new_name"}` (the new name may be dotted, `"rank.k"`, to move a key into
a mapping field), and loading a file or override that still uses the old name prints a warning naming
where it was and what to write instead.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from chatforge.environment import versions_line
from chatforge.errors import ChatforgeError


def opt(default: Any, help: str, **kwargs):
    """A dataclass field with a default and a one-line help text (shown by `chatforge STAGE --help`)."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        factory = (lambda value=default: copy.deepcopy(value))
        return dataclasses.field(default_factory=factory, metadata={"help": help, **kwargs})
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


@dataclasses.dataclass
class _CommandLineValue:
    """A `key=value` from the command line: the raw text, and the text read as YAML."""

    raw: str
    parsed: Any


def _unwrap(value):
    """Command-line values nested in a free-form mapping, read as YAML."""
    if isinstance(value, _CommandLineValue):
        return value.parsed
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _wants_raw_text(tp) -> bool:
    """True when a field takes a plain string, so `prompt=Q: hi` stays text instead of becoming a mapping."""
    if tp in (str, Path):
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(arg in (str, Path) for arg in typing.get_args(tp))
    return False


def _coerce(value: Any, tp, where: str):
    """Check `value` against the annotation `tp`, converting only where it is lossless (int -> float, str -> Path)."""
    if isinstance(value, _CommandLineValue):
        # a list or null still parses as YAML ("files=[a, b]", "seed=null"); other text stays as typed
        keep_text = _wants_raw_text(tp) and not isinstance(value.parsed, list) and value.parsed is not None
        value = value.raw if keep_text else value.parsed
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return _unwrap(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ChatforgeError:
                continue  # try the union's next member
        raise ChatforgeError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ChatforgeError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ChatforgeError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ChatforgeError(f"{where}: expected a mapping, got {value!r}")
        return _unwrap(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ChatforgeError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ChatforgeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ChatforgeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ChatforgeError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ChatforgeError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ChatforgeError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, {}, where)
    return value


def _build(cls, values: dict, sources: dict, where: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        loc = sources.get(key, where)
        if key not in fields:
            owner = f"the {cls.__module__.rsplit('.', 1)[-1]} config" if cls.__name__ == "Config" else cls.__name__
            raise ChatforgeError(f"{loc}: unknown field '{key}' for {owner}{_suggest(key, fields)}")
        kwargs[key] = _coerce(value, hints[key], f"{loc}: field '{key}'")
    return cls(**kwargs)


def _parse_override(item: str):
    if "=" not in item:
        raise ChatforgeError(f"command line: '{item}' is not key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), _CommandLineValue(raw, value)


def _current_name(cls, key: str, where: str) -> str:
    """The field name for `key`: the key itself, or for an old name in cls.RENAMED its new name (with a warning)."""
    new = getattr(cls, "RENAMED", {}).get(key)
    if new is None:
        return key
    print(f"warning: {where}: '{key}' is the old name of '{new}'; write '{new}' instead (the old name will stop "
          "working)", file=sys.stderr)
    return new


def _has_dotted(values: dict, key: str) -> bool:
    node = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _set_dotted(values: dict, key: str, value):
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ChatforgeError(f"command line: '{key}': '{part}' is not a nested section")
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> tuple[dict, dict]:
    """Read a YAML mapping; return (values, {top-level key: line number})."""
    path = Path(path)
    if not path.exists():
        raise ChatforgeError(f"{path}: config file does not exist")
    if path.is_dir():
        raise ChatforgeError(f"{path}: is a folder; --config takes a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise ChatforgeError(f"{path}:{line}: not valid UTF-8 ({exc.reason}); save the config as UTF-8") from None
    try:
        node = yaml.compose(text)
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ChatforgeError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if values is None:
        return {}, {}
    if not isinstance(values, dict):
        raise ChatforgeError(f"{path}: expected a mapping of config fields at the top level")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    return values, lines


def load_config(cls, path: str | Path | None = None, overrides: list[str] | tuple | dict = (),
                validate: bool = True):
    """Build `cls` from an optional YAML file and overrides (`key=value` strings or a dict; they win).

    validate=False checks field names and types only, not the config's own `validate()` (which may
    look for files an earlier stage has yet to write).
    """
    values, sources, where = {}, {}, "command line"
    if path is not None:
        values, lines = read_yaml(path)
        where = str(path)
        sources = {key: f"{path}:{line}" for key, line in lines.items()}
        for old in [key for key in values if key in getattr(cls, "RENAMED", {})]:
            new = _current_name(cls, old, sources[old])
            if _has_dotted(values, new):
                raise ChatforgeError(f"{sources[old]}: '{old}' is the old name of '{new}', which the file sets too; "
                                     f"keep only '{new}'")
            _set_dotted(values, new, values.pop(old))
            sources.setdefault(new.split(".")[0], sources[old])
    # overrides win over the file; an error in one is reported against where it came from
    if isinstance(overrides, dict):
        pairs, origin = list(overrides.items()), "overrides"
    else:
        pairs, origin = [_parse_override(item) for item in overrides], "command line"
    for key, value in pairs:
        key = _current_name(cls, key, origin)
        _set_dotted(values, key, value)
        sources[key.split(".")[0]] = origin
    try:
        cfg = _build(cls, values, sources, where)
    except TypeError as exc:  # a required field is missing
        raise ChatforgeError(f"{where}: {exc}") from None
    check = getattr(cfg, "validate", None)
    if validate and callable(check):
        check()
    return cfg


def require_positive(cfg, stage: str, names: tuple[str, ...]) -> None:
    """Raise a ChatforgeError naming the first of `names` whose value is below 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ChatforgeError(f"{stage}: field '{name}' must be >= 1, got {getattr(cfg, name)}")


def require_above_zero(cfg, stage: str, names: tuple[str, ...]) -> None:
    """Raise a ChatforgeError naming the first of `names` (real numbers, e.g. a temperature) that is not > 0."""
    for name in names:
        if not getattr(cfg, name) > 0:
            raise ChatforgeError(f"{stage}: field '{name}' must be > 0, got {getattr(cfg, name)}")


def config_help(cls) -> str:
    """One line per field: name, type, default, help."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        rows.append(f"  {f.name} ({_type_name(hints[f.name])}, default {default!r})\n      {f.metadata.get('help', '')}")
    renamed = getattr(cls, "RENAMED", {})
    if renamed:
        rows.append("old names still read (with a warning): "
                    + ", ".join(f"{old} -> {new}" for old, new in renamed.items()))
    return "\n".join(rows)


def to_dict(cfg) -> dict:
    """The config as plain YAML-able data (paths as strings), for saving beside a run."""
    def convert(value):
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value
    return convert(dataclasses.asdict(cfg))


def save_config(cfg, path: str | Path) -> None:
    """Write the resolved config to `path` as YAML, the package versions it ran with in a first comment line."""
    Path(path).write_text(f"# ran with {versions_line()}\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False))
