"""Data-parallel training: two CPU processes on gloo against one process with the same global batch."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

import pytest

from memlens.config import ConfigError
from memlens.training import make_run_config, train
from memlens.training.distributed import DistContext, check_batch_size, shard
from memlens.training.trainer import BatchSampler

STEPS = 40
# Adam amplifies float-reduction differences over the steps, the more the larger the learning
# rate: at the tiny preset's 3e-3 the two runs' weights drifted 0.007 apart on TransformerLens
# 4.x once the training forward stopped computing positions past the answer (5.6e-4 before);
# at 1e-3 they stay within 2.1e-4, and training still moves the weights well away (checked below).
LR = 1e-3


def test_shards_of_a_global_batch_partition_it_in_order():
    idx = BatchSampler(1000, 128, seed=3).indices(7)
    parts = [shard(idx, DistContext(rank=r, world_size=4)) for r in range(4)]
    assert torch.equal(torch.cat(parts), idx)
    assert all(len(p) == 32 for p in parts)


def test_a_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(ConfigError, match="batch_size=130.*multiple of 4"):
        check_batch_size(130, DistContext(rank=0, world_size=4))


def test_torchrun_two_gloo_processes_match_one_process(tmp_path):
    config = make_run_config("fda", "tiny", seed=0, overrides={"train.steps": STEPS, "train.lr": LR})
    single = train(config, tmp_path / "single", device="cpu", progress=False)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "memlens.cli", "train", "fda", "--preset", "tiny", "--seed", "0",
           "--steps", str(STEPS), "--set", f"train.lr={LR}", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run: ") == 1  # rank 0 alone reports and writes

    # Same batches and the same averaged gradient: the weights agree up to float reduction order.
    a = load_file(str(tmp_path / "single" / "final.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "final.safetensors"))
    assert a.keys() == b.keys()
    # (buffers such as the attention mask's -inf compare equal, not as inf - inf)
    worst = max(float(torch.where(a[k] == b[k], 0.0, (a[k].double() - b[k].double()).abs()).max())
                for k in a if a[k].is_floating_point() and a[k].numel())
    assert worst < 1e-3, worst
    ddp_final = json.loads((tmp_path / "ddp" / "summary.json").read_text())["final_metrics"]
    for key in ("train_clean_loss", "test_loss"):
        assert abs(ddp_final[key] - single.final_metrics[key]) < 1e-3, key
    # Training moved the weights well away from their start, so agreeing is not trivial.
    first = json.loads((tmp_path / "single" / "metrics.jsonl").read_text().splitlines()[0])
    assert single.final_metrics["train_clean_loss"] < 0.8 * first["train_clean_loss"]
