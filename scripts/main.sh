#!/usr/bin/env bash
# Set up (if needed) and run the main job: a quick end-to-end reproduction on the CPU.
# Shows both tasks' data, then `memlens reproduce` on the tiny preset (two seeds per task, two
# runs at a time): training, every analysis, the report and the claims scorecard. A few minutes
# on 2 cores. Finished runs are reused on a second call; the full study is
# `memlens reproduce --preset small --seeds 3` (about 75 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/venv.sh  # $venv: .venv, or .venv-tl4 with MEMLENS_TL=4
OUT="${OUT:-runs/main}"
"$venv/bin/memlens" data fda --preset small --show 2
"$venv/bin/memlens" data thr --preset small --show 2
"$venv/bin/memlens" reproduce --preset tiny --seeds 2 --jobs 2 --out "$OUT"
echo "main job done: $OUT/report.html, $OUT/claims.md"
