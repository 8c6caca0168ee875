"""``memlens train``: build the run config from preset and flags, train, print the result."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from memlens.training.checkpoint import CheckpointError
from memlens.training.config import make_run_config
from memlens.training.run import RunDirError
from memlens.training.trainer import train


def default_run_dir(task: str, preset: str, seed: int) -> Path:
    return Path("runs") / f"{task}-{preset}-s{seed}"


def run_train_command(args: argparse.Namespace, overrides: dict) -> int:
    if args.noise_rate is not None:
        overrides["task.noise_rate"] = args.noise_rate
    if args.steps is not None:
        overrides["train.steps"] = args.steps
    config = make_run_config(args.task, args.preset, args.seed, overrides)
    out = Path(args.out) if args.out else default_run_dir(args.task, args.preset, args.seed)
    try:
        result = train(config, out, device=args.device, resume=args.resume,
                       progress=not args.no_progress)
    except (RunDirError, CheckpointError) as err:
        print(f"memlens train: error: {err}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports for the job
    print(f"run: {result.run_dir}")
    print("final: " + json.dumps({k: round(v, 4) for k, v in result.final_metrics.items()}))
    print("phases: " + json.dumps(result.phases))
    share = result.eval_seconds / max(result.wall_seconds, 1e-9)
    print(f"wall time: {result.wall_seconds:.1f} s ({result.steps_per_second:.1f} steps/s; "
          f"evaluation {result.eval_seconds:.1f} s = {share:.1%})")
    return 0
