#!/usr/bin/env bash
# Create the virtual environment (if missing) and install memlens with its test tools. Safe to
# run again. torch is pinned to the CPU build that pip finds on these machines; see pyproject.toml.
#
# TransformerLens 3.9 (HookedTransformer models) goes into .venv, the default. With
# MEMLENS_TL=4, TransformerLens 4.x (TransformerBridge models) goes into .venv-tl4 instead
# (docs/backends.md). MEMLENS_VENV overrides the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
. scripts/venv.sh
if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==2.13.0" "$tl" -e ".[dev]"
"$venv/bin/python" -c "import memlens, torch; from memlens import backend; print('memlens', memlens.__version__, 'torch', torch.__version__, backend.describe())"
