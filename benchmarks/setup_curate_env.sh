#!/usr/bin/env bash
# The dedup baseline's own environment (benchmarks/.venv-curate): datatrove beside chatforge, so one
# benchmark times both on the same files. datatrove is never a dependency of chatforge itself.
# xxhash<4: datatrove 0.10 hashes str, which xxhash 4 refuses.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=benchmarks/.venv-curate
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --no-index torch==2.13.0 2>/dev/null || "$VENV/bin/pip" install -q torch==2.13.0
fi
"$VENV/bin/pip" install -q "datatrove[io]>=0.10" "xxhash<4" -e . 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import datatrove, datasketch, sklearn; from importlib.metadata import version; print(f'datatrove {version(\"datatrove\")}, datasketch {datasketch.__version__ if hasattr(datasketch, \"__version__\") else version(\"datasketch\")}')"
