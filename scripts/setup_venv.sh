#!/usr/bin/env bash
# Create .venv/ and install chatforge into it (called by `make`; reruns only when pyproject.toml changes).
#
# torch, in order of preference:
#   1. the torch the base Python already has (e.g. your CUDA build on a GPU machine): the venv is
#      built on top of the system site-packages and keeps it;
#   2. a torch==2.13.0 wheel pip finds locally (find-links, e.g. this project's CPU machines): that
#      exact file is installed, its dependencies come from the package index;
#   3. where `nvidia-smi` sees a GPU: PyPI's default (CUDA) build;
#   4. otherwise the CPU build from PyTorch's CPU index (TORCH_CPU_INDEX), never a multi-GB CUDA wheel.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_VERSION="2.13.0"
quiet() { grep -v "^WARNING: Location" || true; }  # pip's notes about absent local index folders

if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "setup: keeping the torch of $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
    "$PYTHON" -m venv --system-site-packages "$VENV"
else
    "$PYTHON" -m venv "$VENV"
    local_wheels="$(mktemp -d)"
    if "$VENV/bin/pip" download -q --no-index --no-deps "torch==$TORCH_VERSION" -d "$local_wheels" 2>/dev/null; then
        echo "setup: torch from the local wheel $(ls "$local_wheels")"
        "$VENV/bin/pip" install -q "$local_wheels"/torch-*.whl 2>&1 | quiet
    elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" 2>&1 | quiet
    else
        "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}" \
            --extra-index-url "${PIP_INDEX_URL:-https://pypi.org/simple}" 2>&1 | quiet
    fi
    rm -rf "$local_wheels"
fi
"$VENV/bin/pip" install -q -e ".[dev]" 2>&1 | quiet
"$VENV/bin/python" -c "import chatforge, torch, transformers; print(f'setup: chatforge ready (torch {torch.__version__}, transformers {transformers.__version__})')"
