#!/usr/bin/env bash
# Set up (if needed) and run the main job: a quick end-to-end run on the CPU.
# It grows as capabilities land; today it generates both tasks and prints examples.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/memlens data fda --preset small --show 3
.venv/bin/memlens data thr --preset small --show 3
