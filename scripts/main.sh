#!/usr/bin/env bash
# Set up (if needed) and run the main job: a quick end-to-end reproduction on the CPU.
# Shows both tasks' data, then `memlens reproduce` on the quick preset (three-digit addition: two
# seeds with noise, a noise-free baseline and the pure-memorizer reference, two runs at a time):
# training, every analysis, the report, the explorer page and the claims scorecard. About 4
# minutes on 2 cores. Finished runs are reused on a second call; the full study is
# `memlens reproduce --preset small` (both tasks, 5 seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/venv.sh  # $venv: .venv, or .venv-tl4 with MEMLENS_TL=4
OUT="${OUT:-runs/main}"
start=$(date +%s)
"$venv/bin/memlens" data fda --preset quick --show 2
"$venv/bin/memlens" data thr --preset small --show 2
"$venv/bin/memlens" reproduce --preset quick --seeds 2 --baselines 1 --jobs 2 --out "$OUT"
"$venv/bin/memlens" explore "$OUT/fda-quick-s0" --out "$OUT/explore.html"
echo "main job done in $(( $(date +%s) - start )) s: $OUT/report.html, $OUT/claims.md, $OUT/explore.html"
