"""Render each command's `--help` (module docstring + config fields) into the docs pages that ask for it.

A page asks with a pair of markers; everything between them is rewritten:

    <!-- help: chatforge.stages.ppo -->
    <!-- end help -->

`MODULE | OTHER` names fallbacks (the first module that imports wins), for a module being moved.
The table lists every field of the module's `Config` dataclass (and of each `ACTIONS` config, as for
`chatforge label`): name, type, default and the help text given with `opt(default, help)`, which is
what `chatforge COMMAND --help` prints. A module that does not exist yet gets a one-line note
instead, so a page can name a stage before it lands.

    .venv/bin/python scripts/gen_config_docs.py           # rewrite docs/*.md in place
    .venv/bin/python scripts/gen_config_docs.py --check   # exit 1 naming the stale pages
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
import types
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- help: (?P<spec>[^>]+?) -->\n)(?P<body>.*?)(<!-- end help -->)", re.S)


def type_name(tp) -> str:
    """A field's annotation as a reader writes it: list[str], 'rm' | 'gold', int | None."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]" if args else origin.__name__
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    if dataclasses.is_dataclass(value):
        return "(see below)"
    return f"`{str(value) if isinstance(value, Path) else repr(value)}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def nested_dataclass(tp):
    """The dataclass a field holds, alone or as list items (curate's `builtin_crawl`, `sources`)."""
    if dataclasses.is_dataclass(tp):
        return tp, ""
    if typing.get_origin(tp) is list and typing.get_args(tp) and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        return typing.get_args(tp)[0], "each entry of "
    return None, ""


def fields_table(cls, prefix: str = "") -> list[str]:
    """Markdown table of a config dataclass, then one table per nested dataclass field."""
    hints = typing.get_type_hints(cls)
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    nested = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        lines.append(f"| `{prefix}{field.name}` | {cell(type_name(hints[field.name]))} | "
                     f"{cell(default_text(field))} | {cell(field.metadata.get('help', ''))} |")
        inner, how = nested_dataclass(hints[field.name])
        if inner is not None:
            nested.append((field.name, inner, how))
    for name, inner, how in nested:
        lines += ["", f"Fields of {how}`{prefix}{name}` ({inner.__name__}):", ""]
        lines += fields_table(inner, f"{prefix}{name}." if not how else "")
    return lines


def command_of(module_name: str) -> str | None:
    from chatforge.cli import COMMANDS

    return next((name for name, (module, _) in COMMANDS.items() if module == module_name), None)


def import_first(spec: str):
    """The first module of `A | B` that exists, or None when none does (a stage not yet in this tree)."""
    for name in (part.strip() for part in spec.split("|")):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):  # a dependency is missing: say so
                raise
    return None


def render(spec: str) -> str:
    """The generated text for one marker: the module's docstring and its config tables."""
    module = import_first(spec)
    first = spec.split("|")[0].strip()
    if module is None:
        return (f"_`{first}` is not in this tree yet: run `.venv/bin/python scripts/gen_config_docs.py` "
                "once it is._\n\n")
    path = Path(module.__file__).resolve().relative_to(ROOT).as_posix()
    command = command_of(module.__name__)
    how = f"; `chatforge {command} --help` prints the same" if command else ""
    out = [f"Generated from `{path}` by `scripts/gen_config_docs.py`{how}.", ""]
    if module.__doc__:
        out += ["```text", module.__doc__.strip("\n").rstrip(), "```", ""]
    config = getattr(module, "Config", None)
    if dataclasses.is_dataclass(config):
        out += ["Config fields:", ""] + fields_table(config) + [""]
    for action, (action_config, _, text) in (getattr(module, "ACTIONS", None) or {}).items():
        out += [f"`chatforge {command} {action}`: {text}.", ""] + fields_table(action_config) + [""]
    return "\n".join(out).rstrip("\n") + "\n\n"  # a blank line ends the last table before the marker


def render_page(text: str) -> str:
    """`text` with every help block regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("spec")) + m.group(4), text)


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is stale")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    stale = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        new = render_page(text)
        if new != text:
            stale.append(page.relative_to(ROOT).as_posix())
            if not args.check:
                page.write_text(new, encoding="utf-8")
    if args.check and stale:
        print("stale config tables in: " + ", ".join(stale) + "\nrun: .venv/bin/python scripts/gen_config_docs.py")
        return 1
    print(("rewrote: " + ", ".join(stale)) if stale else "every config table is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
