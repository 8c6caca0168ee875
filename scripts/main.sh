#!/usr/bin/env bash
# Set up (if needed) and run the main job: a quick end-to-end run on the CPU.
# Generates both tasks, trains the tiny presets, runs every analysis on them.
# (It grows into `memlens reproduce` as that lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT="${OUT:-runs/main}"
.venv/bin/memlens data fda --preset small --show 3
.venv/bin/memlens data thr --preset small --show 3
for task in fda thr; do
    if [ -f "$OUT/$task-tiny-s0/final.safetensors" ]; then
        echo "$OUT/$task-tiny-s0 is complete; reusing it"
    else
        resume=""
        [ -f "$OUT/$task-tiny-s0/config.json" ] && resume="--resume"
        .venv/bin/memlens train "$task" --preset tiny --seed 0 --out "$OUT/$task-tiny-s0" $resume
    fi
    .venv/bin/memlens analyze "$OUT/$task-tiny-s0"
done
echo "main job done: runs and analyses under $OUT"
