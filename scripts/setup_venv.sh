#!/usr/bin/env bash
# Create .venv/ and install chatforge into it (called by `make`; reruns only when pyproject.toml changes).
#
# torch: a torch the base Python already has (e.g. a CUDA build on a GPU machine) is kept, by building
# the venv on top of the system site-packages. Otherwise torch==2.13.0 is installed: from a local
# wheel when pip has one (this project's CPU machines), else the CPU build on a machine without an
# NVIDIA GPU, and PyPI's default (CUDA) build only where `nvidia-smi` sees a GPU.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_VERSION="2.13.0"

if "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "setup: keeping the torch of $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
    "$PYTHON" -m venv --system-site-packages "$VENV"
else
    "$PYTHON" -m venv "$VENV"
    if ! "$VENV/bin/pip" install -q --no-index "torch==$TORCH_VERSION" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
            "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
        else
            "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" \
                --index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
        fi
    fi
fi
"$VENV/bin/pip" install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import chatforge, torch, transformers; print(f'setup: chatforge ready (torch {torch.__version__}, transformers {transformers.__version__})')"
