"""Data-parallel training with PyTorch DistributedDataParallel, driven by ``torchrun``.

    torchrun --standalone --nproc_per_node 2 -m memlens.cli train fda --preset small

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`setup` joins the process
group (NCCL on CUDA, gloo on CPU). Every rank draws the same global batch of ``batch_size``
examples from the seeded sampler and trains on its own contiguous slice of it, so the data
order is the one a single process sees, and DDP's gradient average over equal slices is the
gradient of the global batch's mean loss. Only rank 0 evaluates and writes the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from memlens.config import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a data-parallel job (``world_size == 1``: no job)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def from_main(self, value):
        """Rank 0's ``value`` on every rank (a small picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup(device: str) -> DistContext:
    """Join the process group that ``torchrun`` describes; a single process gets a no-op context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns_group)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def check_batch_size(batch_size: int, ctx: DistContext) -> None:
    """The global batch must split evenly, or the gradient average would weight ranks unequally."""
    if batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size={batch_size} is invalid with {ctx.world_size} processes: "
                         f"expected a multiple of {ctx.world_size}")


def shard(indices: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous slice of the global batch ``indices``.

    >>> shard(torch.arange(8), DistContext(rank=1, world_size=2)).tolist()
    [4, 5, 6, 7]
    """
    if not ctx.enabled:
        return indices
    return indices.view(ctx.world_size, -1)[ctx.rank]


def wrap(model: torch.nn.Module, ctx: DistContext, device: str) -> torch.nn.Module:
    """The module the training step calls: DDP around ``model`` in a job, else ``model``."""
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[ctx.local_rank] if device == "cuda" else None)
