#!/usr/bin/env bash
# One lent GPU machine (16 CPU cores), one 10-minute device call:
#   bash benchmarks/gpu_presets.sh OUT_DIR [SECONDS]
# 1. THR paper trainer throughput, memlens vs plain PyTorch (a steady 250-step window);
# 2. an FDA paper model trained 3,000 steps, then `memlens analyze --only neurons,circuits`,
#    each analysis timed (issue goal: <= 30 s together);
# 3. the search for faster small presets and a THR paper-scale preset: every candidate below,
#    each for two or three seeds, trained at once on the one GPU with one torch thread each.
#    The trajectories (when test accuracy passes 0.9, when noisy recall passes 0.5 and 0.9) do
#    not depend on the device; the candidates were sized beforehand to fit the 2-core time
#    budgets by their arithmetic, and the chosen ones are timed again on the 2-core machine.
# Metrics and summaries are packed into OUT_DIR every 30 s, so a call stopped at its limit
# still returns what was trained so far.
. "$(dirname "$0")/gpu_common.sh" "$@"
RUNS=/tmp/presets
rm -rf "$RUNS"; mkdir -p "$RUNS"
exec > >(tee -a "$OUT_DIR/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformer_lens, memlens; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1

pack() {  # small files only, atomically replaced
  (cd "$RUNS" && find . \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' \) -print \
    | tar czf "$OUT_DIR/.runs.tgz" -T - 2>/dev/null) && mv "$OUT_DIR/.runs.tgz" "$OUT_DIR/runs.tgz"
}

echo "=== 1. thr paper trainer throughput ($(date +%T))"
timeout 100 python3 benchmarks/training_throughput.py --tasks thr --preset paper --steps 250 --repeats 2 \
  --device cuda --out "$RUNS/training_thr_paper_cuda.json"

echo "=== 2. fda paper, 3,000 steps, then neurons + circuits ($(date +%T))"
timeout 75 $ML train fda --preset paper --seed 0 --device cuda --no-progress --set train.steps=3000 \
  --out "$RUNS/fda-paper-3k-s0"
tail -n 1 "$RUNS/fda-paper-3k-s0/metrics.jsonl" | cut -c1-300
timeout 100 $ML analyze "$RUNS/fda-paper-3k-s0" --only neurons,circuits --device cuda
pack

echo "=== 3. preset candidates, $(( $(left) - 15 )) s ($(date +%T))"
# name | task | seeds | overrides
CANDIDATES="
fda-F1|fda|0 1|train.steps=2400 train.lr=1.5e-3
fda-F2|fda|0 1|train.steps=2400 train.lr=2e-3
fda-F3|fda|0 1|train.steps=4800 train.batch_size=128
fda-F4|fda|0 1|train.steps=2400 task.n_train=8000
thr-T1|thr|0 1 2|train.steps=5000 train.lr=2e-3
thr-T2|thr|0 1 2|train.steps=4500 train.lr=2e-3
thr-T3|thr|0 1 2|train.steps=4000 train.lr=3e-3
thr-T4|thr|0 1 2|train.steps=5000 train.lr=2e-3 train.weight_decay=0.3
thr-T5|thr|0 1|train.steps=9000 train.batch_size=256 train.lr=1.5e-3
"
( while sleep 30; do pack; done ) & PACKER=$!
LIMIT=$(( $(left) - 15 ))
echo "$CANDIDATES" | while IFS='|' read -r name task seeds overrides; do
  [ -z "$name" ] && continue
  sets=""; for o in $overrides; do sets="$sets --set $o"; done
  for seed in $seeds; do
    OMP_NUM_THREADS=1 timeout $LIMIT $ML train "$task" --preset small --seed "$seed" --device cuda \
      --no-progress $sets --out "$RUNS/$name-s$seed" > "$RUNS/$name-s$seed.log" 2>&1 &
  done
done
# Paper-scale THR: E=2,000, R=200, K=20 as the paper preset, a larger batch to use the GPU.
OMP_NUM_THREADS=1 timeout $LIMIT $ML train thr --preset paper --seed 0 --device cuda --no-progress \
  --set train.batch_size=2048 --set train.lr=1e-3 --set train.weight_decay=0.5 --set train.steps=6000 \
  --set train.warmup_steps=300 --set train.eval_every=250 --out "$RUNS/thr-P1-s0" > "$RUNS/thr-P1-s0.log" 2>&1 &
OMP_NUM_THREADS=1 timeout $LIMIT $ML train thr --preset paper --seed 0 --device cuda --no-progress \
  --set model.n_layers=4 --set model.d_model=256 --set train.batch_size=1024 --set train.lr=2e-3 \
  --set train.weight_decay=0.5 --set train.steps=8000 --set train.warmup_steps=300 --set train.eval_every=250 \
  --out "$RUNS/thr-P2-s0" > "$RUNS/thr-P2-s0.log" 2>&1 &
sleep 5
echo "$(pgrep -fc 'memlens.cli train') trainings started"
wait_left=$(( $(left) - 10 ))
end=$(( $(date +%s) + wait_left ))
while [ "$(pgrep -fc 'memlens.cli train')" -gt 0 ] && [ "$(date +%s)" -lt "$end" ]; do sleep 5; done
kill $PACKER 2>/dev/null
pack
echo "=== done ($(date +%T)): $(ls $RUNS/*/summary.json 2>/dev/null | wc -l) runs finished"
for r in "$RUNS"/*/summary.json; do
  python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[1].split('/')[-2], s['phases'], {k: round(v, 3) for k, v in s['final_metrics'].items() if k.endswith('acc')})" "$r"
done
ls -la "$OUT_DIR"
