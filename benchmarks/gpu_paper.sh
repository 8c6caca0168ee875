#!/usr/bin/env bash
# One GPU session's measurements (issue: performance and scale), run on a lent GPU machine:
#   bash benchmarks/gpu_paper.sh OUT_DIR
# 1. FDA paper preset, fp32, to the end (time to memorization);
# 2. THR paper preset for a fixed window (its steps/s; 60,000 steps do not fit one session);
# 3. training throughput of the paper presets: memlens vs plain PyTorch, and torch.compile;
# 4. FDA paper preset with bf16 autocast, to the end (final accuracy against 1.);
# 5. the analyses of run 1 on the GPU, each timed.
# Each step has its own time limit so the whole script ends inside one 10-minute call.
# Python packages the GPU image lacks travel as wheels in .whl/ (docs/benchmarks.md says how).
set -u
OUT_DIR=${1:?usage: gpu_paper.sh OUT_DIR}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
RUNS=/tmp/gpu-runs
rm -rf "$RUNS"; mkdir -p "$RUNS"
ML="python3 -m memlens.cli"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformer_lens, memlens; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1

step() { echo; echo "=== $1 ($(date +%T))"; }

step "1. fda paper fp32"
timeout 150 $ML train fda --preset paper --seed 0 --device cuda --no-progress --out $RUNS/fda-paper-s0
step "2. thr paper fp32, 75 s window"
timeout 75 $ML train thr --preset paper --seed 0 --device cuda --no-progress --out $RUNS/thr-paper-s0
tail -n 1 $RUNS/thr-paper-s0/metrics.jsonl
step "3. training throughput, paper presets"
timeout 110 python3 benchmarks/training_throughput.py --tasks fda thr --preset paper --steps 200 --repeats 2 \
  --device cuda --compile --out "$OUT_DIR/training_cuda.json"
step "4. fda paper bf16"
timeout 130 $ML train fda --preset paper --seed 0 --device cuda --no-progress --set train.precision=bf16 \
  --out $RUNS/fda-paper-bf16-s0
step "5. analyses of fda paper fp32 on the GPU"
timeout 80 $ML analyze $RUNS/fda-paper-s0 --device cuda
step "done"
# Small files only (configs, metrics, summaries, analysis results): weights stay behind.
(cd $RUNS && find . -name '*.json' -o -name '*.jsonl' | tar czf "$OUT_DIR/runs.tar.gz" -T -)
ls -la "$OUT_DIR"
