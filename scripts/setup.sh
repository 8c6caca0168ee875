#!/usr/bin/env bash
# Create .venv (if missing) and install memlens with its test tools. Safe to run again.
# torch is pinned to the CPU build that pip finds on these machines; see pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[dev]"
.venv/bin/python -c "import memlens, torch, transformer_lens; print('memlens', memlens.__version__, 'torch', torch.__version__)"
