#!/usr/bin/env bash
# The small-preset study on one lent GPU machine (16 CPU cores), inside one 10-minute device call:
#   bash benchmarks/gpu_small_study.sh OUT_DIR [SECONDS]
# 1. one THR small run alone for 25 s: its steps/s, the baseline for (2);
# 2. `memlens reproduce --preset small --seeds 5 --device cuda --jobs 16` (FDA and THR, 3
#    baselines and the pure-memorizer reference each): every run trained at once on the one GPU,
#    then as many analyses as the time allows (the rest run later on CPU: reproduce reuses
#    finished runs and analyses);
# 3. THR paper training throughput, memlens vs plain PyTorch, if time is left.
# Results are packed into OUT_DIR every 45 s (small files) and at the end (the weights the
# analyses and the report need: final and pre-memorization, not the noise-free baselines', whose
# metrics are all claim 2 reads), in chunks under the device's 16 MB file limit; at most 8 files
# come back. Score the unpacked study with `memlens claims` and `memlens report` (as in
# docs/results/reproduce-small-gpu-old-presets.md), not `memlens reproduce`: without their weights the baselines
# read as unfinished, and reproduce would train them again.
. "$(dirname "$0")/gpu_common.sh" "$@"
RUNS=/tmp/study
rm -rf "$RUNS" /tmp/solo; mkdir -p "$RUNS"
exec > >(tee -a "$OUT_DIR/log.txt") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc
python3 -c "import torch, transformer_lens, memlens; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1

pack_small() {  # configs, metrics, summaries, analyses, logs: atomically replaced
  (cd "$RUNS" && find . \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' -o -name '*.md' \) -print \
    | tar czf "$OUT_DIR/.small.tgz" -T - 2>/dev/null) && mv "$OUT_DIR/.small.tgz" "$OUT_DIR/small.tgz"
}

echo "=== 1. thr small alone, 25 s ($(date +%T))"
OMP_NUM_THREADS=1 timeout 25 $ML train thr --preset small --seed 0 --device cuda --no-progress --out /tmp/solo
tail -n 1 /tmp/solo/metrics.jsonl; cp /tmp/solo/metrics.jsonl "$RUNS/solo_thr_metrics.jsonl"

echo "=== 2. reproduce small on the GPU, $(( $(left) - 90 )) s ($(date +%T))"
( while sleep 45; do pack_small; done ) & PACKER=$!
timeout $(( $(left) - 90 )) $ML reproduce --preset small --seeds 5 --jobs 16 --device cuda --out "$RUNS"
echo "reproduce rc $? ($(date +%T))"
kill $PACKER 2>/dev/null
pkill -TERM -f "memlens.cli (train|analyze)" ; sleep 2
pack_small

echo "=== 3. weights ($(date +%T))"
python3 - "$RUNS" "$OUT_DIR" <<'EOF'
import sys, tarfile
from pathlib import Path
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(p for p in runs.glob("*/final.safetensors")) + sorted(runs.glob("*/checkpoints/pre_memorization.safetensors"))
files = [p for p in files if "-clean-" not in p.parent.name and "-clean-" not in p.parent.parent.name]
chunk, size, k = [], 0, 0
def flush():
    global chunk, size, k
    if chunk:
        with tarfile.open(out / f"weights{k}.tar", "w") as t:
            for p in chunk:
                t.add(p, arcname=str(p.relative_to(runs)))
        k += 1
    chunk, size = [], 0
for p in files:
    if size + p.stat().st_size > 15_900_000:
        flush()
    chunk.append(p); size += p.stat().st_size
flush()
print(f"{len(files)} weight files in {k} tars")
EOF

if [ "$(left)" -gt 40 ]; then
  echo "=== 4. thr paper training throughput, $(( $(left) - 10 )) s ($(date +%T))"
  timeout $(( $(left) - 10 )) python3 benchmarks/training_throughput.py --tasks thr --preset paper --steps 100 \
    --repeats 2 --device cuda --out "$RUNS/training_thr_paper_cuda.json"
fi
pack_small
echo "=== done ($(date +%T))"
ls -la "$OUT_DIR"
