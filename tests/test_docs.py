"""The docs stay true: generated --help blocks are current, links resolve, the README stays short,
and commit ids live in docs/LOG.md only."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

# a commit id: 7-40 hex characters as a word, holding at least one digit and one of a-f (so that
# "deadbeef"-like words and plain numbers do not count)
COMMIT_ID = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "scripts" / "gen_config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file: lower case, punctuation dropped, spaces -> '-'."""
    found = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_generated_help_blocks_are_current(page):
    text = page.read_text(encoding="utf-8")
    assert load_generator().render_page(text) == text, \
        f"{page.relative_to(ROOT)} is stale: run .venv/bin/python scripts/gen_config_docs.py"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = []
    for match in LINK.finditer(prose(page.read_text(encoding="utf-8"))):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists() or ROOT not in (resolved, *resolved.parents):
            broken.append(f"{target} (no such file in the repository)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading '#{anchor}' in {resolved.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 200, f"README.md has {lines} lines; the limit is 200 (details go to docs/)"


def test_readme_lists_every_command():
    from chatforge.cli import COMMANDS

    table = {m.group(1) for m in re.finditer(r"^\| `([a-z_-]+)` \|", README.read_text(encoding="utf-8"), re.M)}
    missing = sorted(set(COMMANDS) - table)
    assert not missing, f"README.md's command table lacks: {missing}"


def test_readme_commands_are_make_targets():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in re.findall(r"^make ([a-z-]+)", README.read_text(encoding="utf-8"), re.M):
        assert re.search(rf"^{target}:", makefile, re.M), f"README.md runs `make {target}`, not in the Makefile"


def test_commit_ids_only_in_the_log():
    files = [README, *(ROOT / "configs").glob("*.yaml"), *(p for p in DOCS if p.name != "LOG.md")]
    hits = {f"{path.relative_to(ROOT)}:{number}": COMMIT_ID.findall(line)
            for path in files for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if COMMIT_ID.search(line)}
    assert not hits, f"commit ids belong in docs/LOG.md (dated), not here: {hits}"


def test_commit_id_pattern():
    assert COMMIT_ID.findall("at 601ce44 and 09e2534, not 1234567 or deadbee or a28b2d8x") == ["601ce44", "09e2534"]
