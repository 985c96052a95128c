"""constraints.txt pins every package set-up installs, exactly, and nothing that would pull CUDA."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def pins() -> dict[str, str]:
    """{canonical name: version} of constraints.txt; every line that is not a comment must be NAME==VERSION."""
    found = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            match = PIN.match(line.strip())
            assert match, f"constraints.txt:{number}: not NAME==VERSION: {line!r}"
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def test_every_dependency_and_extra_of_pyproject_is_pinned_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = [Requirement(text) for text in project["dependencies"] + extras["dev"] + extras["postgres"]]
    pinned = pins()
    missing = [str(req) for req in requirements if canonicalize_name(req.name) not in pinned]
    assert not missing, f"constraints.txt lacks {missing}: run `make lock`"
    outside = {str(req): pinned[canonicalize_name(req.name)] for req in requirements
               if not req.specifier.contains(pinned[canonicalize_name(req.name)], prereleases=True)}
    assert not outside, f"pins outside pyproject.toml's ranges: {outside}"
    assert "psycopg-binary" in pinned  # the postgres extra's [binary]


def test_nothing_pinned_pulls_cuda_and_torch_is_left_to_the_script():
    cuda = [name for name in pins() if name in ("torch", "triton", "chatforge", "pip")
            or name.startswith(("nvidia-", "cuda-", "pytorch-triton"))]
    assert not cuda, cuda


def test_setup_installs_with_the_pins_and_a_change_of_pins_rebuilds_the_venv():
    makefile = (ROOT / "Makefile").read_text()
    stamp_rule = re.search(r"^\$\(STAMP\):(.*)$", makefile, re.M).group(1)
    assert "constraints.txt" in stamp_rule.split()
    assert re.search(r"^lock:\n\t.*scripts/refresh_pins\.sh", makefile, re.M)
    setup = (ROOT / "scripts" / "setup_venv.sh").read_text()
    assert 'CONSTRAINTS="${CONSTRAINTS-constraints.txt}"' in setup and 'pins=(-c "$CONSTRAINTS")' in setup
