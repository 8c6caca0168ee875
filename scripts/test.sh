#!/usr/bin/env bash
# Set up (if needed) and run the default test suite: fast tests and the library's doctests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the slow tests.
# MEMLENS_TL=4 runs it on TransformerLens 4.x in .venv-tl4 (see scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/venv.sh  # $venv: .venv, or .venv-tl4 with MEMLENS_TL=4
exec "$venv/bin/python" -m pytest -m "not slow" "$@"
