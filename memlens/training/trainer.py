"""The training loop: AdamW, warmup and schedule, answer-only loss, evaluation, checkpoints.

Batches are a pure function of (seed, step): each epoch is a fresh permutation drawn from a
generator seeded with (seed, epoch), so a resumed run sees exactly the batches an uninterrupted
one would, and no sampler state has to be saved.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from memlens import backend
from memlens.io import atomic_write_json
from memlens.models import build_model
from memlens.tasks import Dataset, Examples, task_from_config
from memlens.training import distributed
from memlens.training import run as rundir
from memlens.training.checkpoint import load_resume_state, save_resume_state, save_weights
from memlens.training.config import RunConfig
from memlens.training.fast_forward import FastForward, supports
from memlens.training.metrics import answer_logits, answer_loss, evaluate, phase_summary


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when present, else CPU; asking for CUDA without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is invalid: expected 'auto', 'cpu' or 'cuda'")
    return device


class BatchSampler:
    """Indices of the batch for each step, without replacement within an epoch."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            epoch_seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
            gen = torch.Generator().manual_seed(epoch_seed)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        start, need, parts = step * self.batch_size, self.batch_size, []
        while need > 0:  # a batch may straddle two epochs
            epoch, offset = divmod(start, self.n)
            take = min(need, self.n - offset)
            parts.append(self._permutation(epoch)[offset:offset + take])
            start, need = start + take, need - take
        return torch.cat(parts)


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW; weight decay on the parameters that are matrices in the HookedTransformer layout
    (which includes the per-head Q/K/V biases, ``(n_heads, d_head)``), not on other biases and
    LayerNorm parameters. Decided in that layout, so both TransformerLens versions train alike."""
    ndim = {id(p): backend.to_canonical(model, p, p).ndim for p in model.parameters()}
    decay = [p for p in model.parameters() if ndim[id(p)] >= 2]
    no_decay = [p for p in model.parameters() if ndim[id(p)] < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
    )


def eval_splits(dataset: Dataset, max_per_split: int, seed: int) -> dict[str, Examples]:
    """The evaluation splits, each capped at a fixed, seeded subset of ``max_per_split``."""
    splits = dataset.splits
    gen = torch.Generator().manual_seed(seed)
    for name, examples in splits.items():
        if len(examples) > max_per_split:
            keep = torch.randperm(len(examples), generator=gen)[:max_per_split].sort().values
            splits[name] = examples[keep]
    return splits


@dataclass
class TrainResult:
    run_dir: Path
    final_metrics: dict
    phases: dict
    wall_seconds: float
    steps_per_second: float
    eval_seconds: float = 0.0


def train(config: RunConfig, out_dir: str | Path, device: str = "auto", resume: bool = False,
          progress: bool = True, callback: Callable[[int, dict | None], None] | None = None,
          ) -> TrainResult:
    """Train a model for ``config`` and write the run directory ``out_dir``.

    ``callback(step, metrics_or_None)`` runs after every update (with the new metrics row after
    an evaluation); an exception it raises stops training, and ``resume=True`` continues later.

    >>> from memlens.training import make_run_config
    >>> import tempfile
    >>> cfg = make_run_config("fda", "tiny", overrides={"train.steps": 20})
    >>> result = train(cfg, tempfile.mkdtemp() + "/run", progress=False)
    >>> sorted(result.final_metrics)[:2]
    ['noisy_memorized_acc', 'noisy_memorized_loss']
    """
    run_dir = Path(out_dir)
    device = resolve_device(device)
    ctx = distributed.setup(device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        distributed.check_batch_size(config.train.batch_size, ctx)
        # Rank 0 alone creates or checks the run directory; the others wait until it has.
        outcome = None
        if ctx.is_main:
            try:
                outcome = rundir.prepare_run_dir(run_dir, config, resume)
            except Exception as err:  # every rank must learn of it, or the others would hang
                outcome = err
        continuing = ctx.from_main(outcome)
        if isinstance(continuing, Exception):
            raise continuing
        if device == "cpu":
            # CPU embedding backward accumulates in a thread-dependent order unless told
            # otherwise; deterministic kernels make a resumed run bit-identical to an
            # uninterrupted one.
            torch.use_deterministic_algorithms(True)
        return _train(config, run_dir, device, continuing, progress and ctx.is_main, callback, ctx)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        distributed.teardown(ctx)


def _train(config: RunConfig, run_dir: Path, device: str, continuing: bool, progress: bool,
           callback: Callable[[int, dict | None], None] | None,
           ctx: distributed.DistContext) -> TrainResult:
    if continuing and (run_dir / rundir.FINAL).exists():
        summary = json.loads((run_dir / rundir.SUMMARY).read_text())
        return TrainResult(run_dir, summary["final_metrics"], summary["phases"],
                           summary["wall_seconds"], summary["steps_per_second"],
                           summary.get("eval_seconds", 0.0))

    task = task_from_config(config.task, config.task_config)
    dataset = task.generate(config.seed)
    fingerprint = config.fingerprint()
    precision = resolve_precision(config.train.precision, device)
    if not continuing:
        if ctx.is_main:
            rundir.write_run_header(run_dir, config, dataset, task.tokenizer, device, precision)
    else:
        header = json.loads((run_dir / rundir.CONFIG).read_text())
        if header.get("dataset_hash") != dataset.content_hash:
            raise rundir.RunDirError(f"{run_dir}: the regenerated dataset does not match its hash")
        # A resumed run keeps the precision it started in, whatever ``auto`` gives here.
        precision = header.get("precision", precision)

    model = build_model(config.model, task, seed=config.seed, device=device)
    tcfg = config.train
    # The training step calls ``net``; evaluation, checkpoints and analyses use the
    # TransformerLens ``model``, whose parameters ``net`` shares.
    fast = tcfg.fast_forward and supports(model)
    eval_net = FastForward(model) if fast else model  # evaluation needs no hooks either
    net = distributed.wrap(eval_net, ctx, device)
    if tcfg.compile:
        net = torch.compile(net)
    optimizer = make_optimizer(model, tcfg)
    start_step, rows = 0, []
    resume_file = run_dir / rundir.CHECKPOINTS / rundir.RESUME
    if continuing and resume_file.exists():
        start_step = load_resume_state(resume_file, model, optimizer, fingerprint)
        rows = [r for r in rundir.read_metrics(run_dir) if r["step"] <= start_step] if ctx.is_main else []
    wall_offset = rows[-1]["wall_s"] if rows else 0.0

    train_set = dataset.train.to(device)
    splits = eval_splits(dataset, tcfg.eval_max_per_split, config.seed)
    sampler = BatchSampler(len(train_set), tcfg.batch_size, config.seed)
    eval_steps = set(tcfg.eval_steps())
    checkpoint_steps = set(tcfg.checkpoint_steps())
    answer_pos = train_set.answer_pos
    # Causal attention: no position after the last answer-predicting one reaches the loss, so the
    # training forward never computes them (THR: 1 of 5 positions; FDA: 1 of 16).
    train_tokens = train_set.tokens[:, : int(answer_pos.max()) + 1]
    autocast = _autocast(precision, device)
    eval_seconds = 0.0

    def log_eval(step: int) -> dict:
        nonlocal eval_seconds
        if device == "cuda":
            torch.cuda.synchronize()  # charge queued training kernels to training, not evaluation
        start = time.perf_counter()
        row = {"step": step, **evaluate(eval_net, splits, tcfg.eval_batch_size),
               "lr": tcfg.lr_at(max(step - 1, 0)), "wall_s": round(wall_offset + start - t0, 3)}
        rows.append(row)
        rundir.write_metrics(run_dir, rows)
        if row.get("noisy_memorized_acc", 1.0) < rundir.PRE_MEMORIZATION_RECALL:
            # The latest state before memorization: the null of the neuron-outlier analysis.
            save_weights(run_dir / rundir.CHECKPOINTS / rundir.PRE_MEMORIZATION, model, step, fingerprint)
        eval_seconds += time.perf_counter() - start
        return row

    t0 = time.perf_counter()
    if start_step == 0:
        rows = []
        if ctx.is_main:
            log_eval(0)
    bar = tqdm(total=tcfg.steps, initial=start_step, disable=not progress, desc=f"{config.task} s{config.seed}",
               dynamic_ncols=True)
    model.train()
    for step in range(start_step, tcfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = tcfg.lr_at(step)
        idx = distributed.shard(sampler.indices(step), ctx).to(device)
        with autocast:
            logits = answer_logits(net, train_tokens[idx], answer_pos)
        loss = answer_loss(logits, train_set.labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
        done = step + 1
        bar.update(1)
        if not ctx.is_main:
            continue  # rank 0 alone evaluates and writes
        if done in eval_steps:
            row = log_eval(done)
            bar.set_postfix(loss=f"{loss.item():.3f}", test=f"{row['test_acc']:.3f}",
                            clean=f"{row['train_clean_acc']:.3f}", mem=f"{row['noisy_memorized_acc']:.3f}",
                            true=f"{row['noisy_true_acc']:.3f}")
        if done in checkpoint_steps:
            save_weights(rundir.checkpoint_path(run_dir, done), model, done, fingerprint)
        if done % tcfg.resume_every == 0 or done == tcfg.steps:
            save_resume_state(resume_file, model, optimizer, done, fingerprint)
        if callback is not None:
            callback(done, rows[-1] if rows[-1]["step"] == done else None)
    bar.close()
    if not ctx.is_main:
        return TrainResult(run_dir, {}, {}, time.perf_counter() - t0, 0.0)

    wall = wall_offset + time.perf_counter() - t0
    trained_steps = tcfg.steps - start_step
    steps_per_second = trained_steps / max(time.perf_counter() - t0, 1e-9)
    final = {k: v for k, v in rows[-1].items() if k not in ("step", "lr", "wall_s")}
    phases = phase_summary(pd.DataFrame(rows))
    save_weights(run_dir / rundir.FINAL, model, tcfg.steps, fingerprint)
    atomic_write_json(run_dir / rundir.SUMMARY, {
        "final_metrics": final, "phases": phases, "wall_seconds": round(wall, 2),
        "steps_per_second": round(steps_per_second, 2), "eval_seconds": round(eval_seconds, 2),
        "device": device, "precision": precision, "torch_threads": torch.get_num_threads(),
    })
    return TrainResult(run_dir, final, phases, wall, steps_per_second, eval_seconds)


def resolve_precision(precision: str, device: str) -> str:
    """The precision a run trains in: ``auto`` is ``bf16`` on a CPU with native bf16 matrix
    multiplies (oneDNN's check: AVX512-BF16, AMX or ARM BF16), ``fp32`` on other CPUs and on
    GPUs.

    >>> resolve_precision("fp32", "cpu"), resolve_precision("auto", "cuda")
    ('fp32', 'fp32')
    """
    if precision != "auto":
        return precision
    if device == "cpu" and torch.backends.mkldnn.is_available():
        try:
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch build without the check
            native = False
        return "bf16" if native else "fp32"
    return "fp32"


def _autocast(precision: str, device: str):
    """The context the training forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return contextlib.nullcontext()
