# Sourced by the one-call GPU scripts (gpu_presets.sh, gpu_small_study.sh) as
#   . "$(dirname "$0")/gpu_common.sh" "$@"
# Arguments OUT_DIR [SECONDS]; sets OUT_DIR, BUDGET, START, left() (seconds of the budget left)
# and ML (the memlens CLI), and installs the Python packages the GPU image lacks from .whl/
# (docs/benchmarks.md says how they travel).
set -u
OUT_DIR=${1:?usage: $(basename "$0") OUT_DIR [SECONDS]}
BUDGET=${2:-540}
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && [ "${SMOKE:-0}" != 1 ]; then  # SMOKE: a local dry run, packages already here
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
ML="python3 -m memlens.cli"
