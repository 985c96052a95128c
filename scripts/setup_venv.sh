#!/usr/bin/env bash
# Create .venv/ and install chatforge into it (called by `make`; reruns when pyproject.toml, constraints.txt or
# this script change). Every package comes at the exact version constraints.txt pins (`make lock` refreshes it).
#
# torch, in order of preference:
#   1. the torch the base Python already has (e.g. your CUDA build on a GPU machine): the venv is
#      built on top of the system site-packages and keeps it, and the packages torch itself requires are
#      left as that torch has them (a pin of ours could contradict an older torch's own);
#   2. a torch==2.13.0 wheel pip finds locally (find-links, e.g. this project's CPU machines): that
#      exact file is installed, its dependencies come from the package index;
#   3. where `nvidia-smi` sees a GPU: PyPI's default (CUDA) build;
#   4. otherwise the CPU build from PyTorch's CPU index (TORCH_CPU_INDEX), never a multi-GB CUDA wheel.
# CONSTRAINTS= (empty) installs the newest versions pyproject.toml allows (scripts/refresh_pins.sh);
# EXTRAS picks pyproject's extras (default dev; e.g. EXTRAS=dev,postgres).
set -euo pipefail
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
CONSTRAINTS="${CONSTRAINTS-constraints.txt}"
EXTRAS="${EXTRAS:-dev}"
TORCH_VERSION="2.13.0"
quiet() { grep -v "^WARNING: Location" || true; }  # pip's notes about absent local index folders

pins=()
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ -n "$CONSTRAINTS" ]; then
    pins=(-c "$CONSTRAINTS")
fi

if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "setup: keeping the torch of $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
    "$PYTHON" -m venv --system-site-packages "$VENV"
    if [ -n "$CONSTRAINTS" ]; then  # the pins less the packages this torch requires: those stay as it has them
        "$PYTHON" - "$CONSTRAINTS" > "$work/constraints.txt" <<'PY'
import re, sys
from importlib.metadata import requires

def name(text):
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]*)", text).group(1)).lower()

torch_needs = {name(requirement) for requirement in requires("torch") or [] if "extra ==" not in requirement}
for line in open(sys.argv[1]):
    if name(line) not in torch_needs:
        print(line, end="")
PY
        pins=(-c "$work/constraints.txt")
    fi
else
    "$PYTHON" -m venv "$VENV"
    if "$VENV/bin/pip" download -q --no-index --no-deps "torch==$TORCH_VERSION" -d "$work" 2>/dev/null; then
        echo "setup: torch from the local wheel $(ls "$work")"
        "$VENV/bin/pip" install -q ${pins[@]+"${pins[@]}"} "$work"/torch-*.whl 2>&1 | quiet
    elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        "$VENV/bin/pip" install -q ${pins[@]+"${pins[@]}"} "torch==$TORCH_VERSION" 2>&1 | quiet
    else
        "$VENV/bin/pip" install -q ${pins[@]+"${pins[@]}"} "torch==$TORCH_VERSION" \
            --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}" \
            --extra-index-url "${PIP_INDEX_URL:-https://pypi.org/simple}" 2>&1 | quiet
    fi
fi
"$VENV/bin/pip" install -q ${pins[@]+"${pins[@]}"} -e ".[$EXTRAS]" 2>&1 | quiet
echo "setup: chatforge ready, pinned by ${CONSTRAINTS:-nothing (the newest versions pyproject.toml allows)}:"
echo "  $("$VENV/bin/python" -m chatforge.environment)"
