#!/usr/bin/env bash
# The TRL baseline's own environment (benchmarks/.venv-trl): torch, TRL and chatforge side by side,
# so one benchmark process times both. TRL is never a dependency of chatforge itself.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=benchmarks/.venv-trl
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --no-index torch==2.13.0 2>/dev/null || "$VENV/bin/pip" install -q torch==2.13.0
fi
"$VENV/bin/pip" install -q "trl>=1.0" datasets -e . 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import trl, transformers, torch; print(f'trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}')"
