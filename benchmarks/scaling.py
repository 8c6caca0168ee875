"""How training and each analysis grow with dataset size, model size and number of examples.

    .venv/bin/python benchmarks/scaling.py [--device cpu]

Three sizes per axis, FDA with 4-digit operands (the small preset's task), freshly initialized
models (time does not depend on what the weights learned). For each measurement the growth is
stated as the exponent of a least-squares fit of log(time) on log(size): 1 is linear, 0 flat.

* training: seconds per step against n_train (2,000 / 10,000 / 50,000) and d_model
  (64 / 128 / 256, two layers);
* analyses (logit lens, probes, patch_intermediate, interventions, encoding): seconds against
  the number of examples (250 / 500 / 1,000) and d_model (64 / 128 / 256).

Writes docs/benchmarks/scaling.json and docs/benchmarks/scaling.md.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, write_doc, write_json  # noqa: E402

from memlens.analysis.encoding import encoding  # noqa: E402
from memlens.analysis.intermediate_patching import patch_intermediate  # noqa: E402
from memlens.analysis.interventions import intervene  # noqa: E402
from memlens.analysis.logit_lens import logit_lens  # noqa: E402
from memlens.analysis.probes import fit_probes  # noqa: E402
from memlens.models import ModelConfig, build_model  # noqa: E402
from memlens.tasks import make_task  # noqa: E402
from memlens.training import make_run_config, train  # noqa: E402

N_TRAIN = (2_000, 10_000, 50_000)
D_MODEL = (64, 128, 256)
N_EXAMPLES = (250, 500, 1_000)
TRAIN_STEPS = 60


def growth_exponent(sizes, seconds) -> float:
    """Slope of log(seconds) against log(size), least squares."""
    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def best_of(fn, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def train_seconds_per_step(n_train: int, d_model: int, device: str) -> float:
    cfg = make_run_config("fda", "small", overrides={
        "task.n_train": n_train, "model.d_model": d_model, "train.steps": TRAIN_STEPS,
        "train.eval_log_points": 0, "train.eval_every": TRAIN_STEPS, "train.checkpoint_log_points": 0})
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, Path(tmp) / "run", device=device, progress=False)
    return (result.wall_seconds - result.eval_seconds) / TRAIN_STEPS


def analysis_seconds(n: int, d_model: int, device: str) -> dict[str, float]:
    """Seconds of each analysis on ``n`` mixed clean/noisy training examples."""
    task = make_task("fda", "small")
    data = task.generate(0)
    model = build_model(ModelConfig(n_layers=2, d_model=d_model, n_heads=4), task, seed=0, device=device)
    clean, noisy = data.splits["train_clean"], data.splits["train_noisy"]
    half = n // 2
    is_noisy = data.train.is_noisy
    mixed = data.train[torch.cat([torch.nonzero(~is_noisy)[:half, 0], torch.nonzero(is_noisy)[:n - half, 0]])]
    groups = {"train_clean": clean[:half], "train_noisy": noisy[:n - half], "test": data.test[:half]}
    fit = clean[half:half + n]
    return {
        "logit_lens": best_of(lambda: logit_lens(model, groups)),
        "probes": best_of(lambda: fit_probes(model, fit, {"test": data.test[:half]}, ["column_sum"],
                                             controls=False)),
        "patch_intermediate": best_of(lambda: patch_intermediate(model, mixed, "column_sum", column=1)),
        "interventions": best_of(lambda: intervene(model, groups, fit, "column_sum", column=1, layer=1,
                                                   position=task.layout.predicting_pos(1))),
        "encoding": best_of(lambda: encoding(model, mixed)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    record: dict = {"command": command_line(), "machine": f"{platform.machine()}, torch threads "
                    f"{torch.get_num_threads()}", "device": args.device, "headline": []}

    train_by_data = [train_seconds_per_step(n, 128, args.device) for n in N_TRAIN]
    print("training s/step by n_train", [f"{s:.4f}" for s in train_by_data], flush=True)
    train_by_model = [train_seconds_per_step(10_000, d, args.device) for d in D_MODEL]
    print("training s/step by d_model", [f"{s:.4f}" for s in train_by_model], flush=True)
    by_examples = [analysis_seconds(n, 128, args.device) for n in N_EXAMPLES]
    print("analyses by examples", by_examples, flush=True)
    by_model = [analysis_seconds(500, d, args.device) for d in D_MODEL]
    print("analyses by d_model", by_model, flush=True)

    rows = [("training, seconds per step", "n_train", N_TRAIN, train_by_data),
            ("training, seconds per step", "d_model", D_MODEL, train_by_model)]
    for name in by_examples[0]:
        rows.append((name, "examples", N_EXAMPLES, [r[name] for r in by_examples]))
        rows.append((name, "d_model", D_MODEL, [r[name] for r in by_model]))
    record["rows"] = [{"what": w, "axis": a, "sizes": list(s), "seconds": t,
                       "growth_exponent": growth_exponent(s, t)} for w, a, s, t in rows]
    table = ["| what | axis | sizes | seconds | growth exponent |", "|---|---|---|---|---|"]
    for r in record["rows"]:
        secs = " / ".join(f"{t:.4f}" if t < 0.1 else f"{t:.2f}" for t in r["seconds"])
        sizes = " / ".join(f"{s:,}" for s in r["sizes"])
        table.append(f"| {r['what']} | {r['axis']} | {sizes} | {secs} | {r['growth_exponent']:.2f} |")
    text = "\n".join([
        "# Scaling: training and analyses against data, model and example counts",
        "",
        f"Command: `{command_line()}`. Machine: {record['machine']}.",
        "FDA, 4-digit operands; two-layer models with 4 heads; training per step excludes "
        f"evaluation ({TRAIN_STEPS} steps, batch 256); analyses on untrained models, best of 2. "
        "Growth exponent: slope of log(seconds) on log(size) (1 = linear, 0 = flat).",
        "",
        *table,
        "",
    ])
    write_json("scaling.json", record)
    print(write_doc("scaling.md", text))


if __name__ == "__main__":
    main()
