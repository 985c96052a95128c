#!/usr/bin/env bash
# Rewrite constraints.txt (`make lock`): set-up (scripts/setup_venv.sh, the same torch logic) into a throwaway
# venv with the newest versions pyproject.toml allows, dev and postgres extras, then pin everything it holds.
# With a venv folder as argument, pin what that venv holds instead (e.g. `bash scripts/refresh_pins.sh .venv`).
# Left out: chatforge, pip, torch (setup_venv.sh pins it) and the CUDA packages a torch build brings
# (nvidia-*, triton, cuda-*): those follow torch, and must never come onto a CPU machine from here.
# Run it where the base Python has no torch of its own, or torch's dependencies go unpinned.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-constraints.txt}"
source_venv="${1:-}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ -z "$source_venv" ]; then
    source_venv="$work/venv"
    made="the newest versions pyproject.toml allows, frozen from a fresh venv"
    CONSTRAINTS= EXTRAS=dev,postgres PYTHON="$PYTHON" VENV="$source_venv" bash scripts/setup_venv.sh
else
    made="frozen from the venv $source_venv"
fi
python_version="$("$source_venv/bin/python" -c 'import platform; print(platform.python_version(), platform.system(), platform.machine())')"
"$source_venv/bin/python" -m pip freeze --local --all --exclude-editable > "$work/freeze.txt"
{
    echo "# Exact versions for scripts/setup_venv.sh (pip install -c constraints.txt): every package \`make demo\`"
    echo "# and \`make test\` install, and the postgres extra's. Left out: torch (setup_venv.sh pins it) and the"
    echo "# CUDA packages a torch build brings (nvidia-*, triton, cuda-*), which follow torch and never come onto"
    echo "# a CPU machine from here. Made by scripts/refresh_pins.sh (\`make lock\`) on $(date -u +%Y-%m-%d) with"
    echo "# Python $python_version: $made."
    echo "# See docs/README.md#pinned-versions."
    grep -v -i -E '^(-e |#|pip==|torch( @|==)|nvidia-|triton|pytorch-triton|cuda-)' "$work/freeze.txt" || true
} > "$OUT"
echo "lock: $OUT pins $(grep -c '==' "$OUT") packages ($made)"
