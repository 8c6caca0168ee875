"""Training throughput: the memlens trainer against a plain PyTorch loop, alternated in one process.

    .venv/bin/python benchmarks/training_throughput.py [--tasks fda thr] [--preset small]
        [--steps 250] [--repeats 3] [--device cpu] [--compile] [--precision fp32]

For each task's preset, three paths train for ``--steps`` steps on the same batches (the
trainer's seeded sampler), batch size, answer-only loss, AdamW, schedule and gradient clipping:

* ``memlens``: :func:`memlens.train` on a HookedTransformer, everything included (progress bar,
  resume checkpoints every ``resume_every`` steps), timed over ``--steps`` updates in the middle
  of a run (``memlens_run``: not its first and last evaluation, nor its end-of-run writes);
  one evaluation's time is reported on its own. Use a multiple of ``resume_every`` (250) for
  ``--steps`` so that the window holds the resume saves at their real rate.
* ``plain``: the same architecture written in plain PyTorch (benchmarks/plain_transformer.py) in a
  minimal loop. The tokens/s ratio memlens/plain is the issue's goal (>= 0.9).
* ``hooked-plain``: the HookedTransformer in the minimal loop; memlens/hooked-plain isolates the
  trainer's own overhead from TransformerLens'.

The evaluation share at the preset's default cadence is computed from the measured cost of one
evaluation and of one training step: n_evals * t_eval / (n_evals * t_eval + steps * t_step).
With ``--compile``, a fourth path runs the hooked-plain loop on ``torch.compile(model)``.
Writes docs/benchmarks/training_<device>.json, which benchmarks/run_all.py collects.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS  # noqa: E402
from plain_transformer import plain_model_for  # noqa: E402

from memlens.io import atomic_write_json  # noqa: E402
from memlens.models import build_model  # noqa: E402
from memlens.tasks import task_from_config  # noqa: E402
from memlens.training import make_run_config, train  # noqa: E402
from memlens.training.metrics import answer_loss  # noqa: E402
from memlens.training.trainer import BatchSampler, make_optimizer, resolve_precision  # noqa: E402


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_loop(model, config, train_set, device: str, steps: int, precision: str) -> float:
    """Seconds for ``steps`` updates of a minimal loop (no evaluation, no logging)."""
    tcfg = config.train
    optimizer = make_optimizer(model, tcfg)
    sampler = BatchSampler(len(train_set), tcfg.batch_size, config.seed)
    answer_pos = train_set.answer_pos
    model.train()
    sync(device)
    start = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = tcfg.lr_at(step)
        idx = sampler.indices(step).to(device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(train_set.tokens[idx])[:, answer_pos]
        loss = answer_loss(logits, train_set.labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        optimizer.step()
    sync(device)
    return time.perf_counter() - start


WARM_STEPS = 10  # updates before the timed slice of a memlens run (allocator, first calls)


def memlens_run(config, device: str, steps: int) -> tuple[float, float]:
    """(seconds of ``steps`` updates of :func:`memlens.train`, seconds of one evaluation).

    The run is ``WARM_STEPS + steps + 1`` updates long and the slice is timed from the callback
    after update ``WARM_STEPS`` to the one after update ``WARM_STEPS + steps``: everything the
    trainer does per step is inside it (schedule, sampler, progress bar, the resume checkpoints
    it writes every ``resume_every`` steps), but not the first and last evaluation nor the
    end-of-run writes, which a long run pays once and a short window would charge in full.
    """
    marks: dict[int, float] = {}

    def mark(done: int, _row) -> None:
        if done in (WARM_STEPS, WARM_STEPS + steps):
            sync(device)
            marks[done] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        result = train(config, Path(tmp) / "run", device=device, progress=False, callback=mark)
    n_evals = len(config.train.eval_steps())
    return marks[WARM_STEPS + steps] - marks[WARM_STEPS], result.eval_seconds / n_evals


def bench_task(task: str, preset: str, steps: int, repeats: int, device: str, precision: str,
               use_compile: bool) -> dict:
    full = make_run_config(task, preset, seed=0, overrides={"train.precision": precision})
    run_steps = WARM_STEPS + steps + 1
    window = make_run_config(task, preset, seed=0, overrides={
        "train.steps": run_steps, "train.eval_log_points": 0, "train.eval_every": run_steps,
        "train.checkpoint_log_points": 0, "train.precision": precision})
    task_obj = task_from_config(task, full.task_config)
    train_set = task_obj.generate(0).train.to(device)
    hooked = build_model(full.model, task_obj, seed=0, device=device)
    plain = plain_model_for(hooked).to(device)
    paths = {
        "memlens": lambda: memlens_run(window, device, steps),
        "plain": lambda: (plain_loop(plain, window, train_set, device, steps, precision), None),
        "hooked-plain": lambda: (plain_loop(hooked, window, train_set, device, steps, precision), None),
    }
    if use_compile:
        compiled = torch.compile(hooked)
        plain_loop(compiled, window, train_set, device, 20, precision)  # compile outside the timing
        paths["hooked-plain-compiled"] = lambda: (plain_loop(compiled, window, train_set, device, steps, precision), None)
    for fn in paths.values():  # warm-up: allocator, kernels, first-call costs
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    eval_costs = []
    names = list(paths)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            secs, eval_cost = paths[name]()
            seconds[name].append(secs)
            if eval_cost is not None:
                eval_costs.append(eval_cost)
    tokens_per_step = window.train.batch_size * train_set.tokens.shape[1]
    med = {name: statistics.median(s) for name, s in seconds.items()}
    t_step, t_eval = med["memlens"] / steps, statistics.median(eval_costs)
    n_evals_full = len(full.train.eval_steps())
    eval_share = n_evals_full * t_eval / (n_evals_full * t_eval + full.train.steps * t_step)
    return {
        "task": task, "preset": preset, "steps": steps, "repeats": repeats,
        "tokens_per_step": tokens_per_step,
        "tokens_per_second": {n: tokens_per_step * steps / s for n, s in med.items()},
        "ratio_vs_plain": [p / m for m, p in zip(seconds["memlens"], seconds["plain"])],
        "ratio_vs_hooked_plain": [p / m for m, p in zip(seconds["memlens"], seconds["hooked-plain"])],
        "seconds": seconds,
        "eval_seconds_each": t_eval, "evals_at_default_cadence": n_evals_full,
        "full_steps": full.train.steps, "eval_share_at_default_cadence": eval_share,
        "resume_saves_in_window": steps // full.train.resume_every,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["fda", "thr"])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                        help="every path trains in it (auto: what the trainer resolves it to here)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", default=None, help="JSON file (default docs/benchmarks/training_<device>.json)")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    args.precision = resolve_precision(args.precision, args.device)
    results = [bench_task(t, args.preset, args.steps, args.repeats, args.device, args.precision,
                          args.compile) for t in args.tasks]
    machine = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.machine()}, {torch.get_num_threads()} torch threads"
    record = {"command": "python benchmarks/training_throughput.py " + " ".join(sys.argv[1:]),
              "machine": machine, "torch": torch.__version__, "precision": args.precision,
              "results": results}
    out = Path(args.out) if args.out else DOCS / f"training_{args.device}.json"
    atomic_write_json(out, record)
    for r in results:
        tps = ", ".join(f"{k} {v:,.0f}" for k, v in r["tokens_per_second"].items())
        print(f"{r['task']} {r['preset']}: tokens/s {tps}; memlens/plain {statistics.median(r['ratio_vs_plain']):.3f}; "
              f"memlens/hooked-plain {statistics.median(r['ratio_vs_hooked_plain']):.3f}; "
              f"eval share at default cadence {r['eval_share_at_default_cadence']:.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
