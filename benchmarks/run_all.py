"""Run the benchmarks one after the other and write docs/benchmarks.md from their figures.

    .venv/bin/python benchmarks/run_all.py --fda-run runs/fda-small-s0 --thr-run runs/thr-small-s0
    .venv/bin/python benchmarks/run_all.py --only training,scaling
    .venv/bin/python benchmarks/run_all.py --collect-only

Each benchmark is its own script (so it can be rerun alone) that alternates the memlens path
and its baseline in one process and writes docs/benchmarks/<name>.json (+ .md). This runner
starts them in fresh processes, never two at once (they would share the cores), and then
collects every JSON found, including figures measured on a GPU machine
(docs/benchmarks/training_cuda.json, docs/benchmarks/gpu/), into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, ROOT  # noqa: E402

from memlens.io import atomic_write_text  # noqa: E402
from memlens.training.metrics import first_step  # noqa: E402

BENCH = Path(__file__).resolve().parent


def commands(args) -> dict[str, list[str]]:
    """Benchmark name -> argv; the ones that need trained runs only when they are given."""
    py = sys.executable
    out = {
        "data_generation": [py, str(BENCH / "data_generation.py")],
        "training": [py, str(BENCH / "training_throughput.py"), "--tasks", "fda", "thr",
                     "--preset", "small", "--steps", "250", "--repeats", "3"],
        "scaling": [py, str(BENCH / "scaling.py")],
        "softmax_width": [py, str(BENCH / "softmax_width.py")],
    }
    if args.fda_run:
        out["patching"] = [py, str(BENCH / "patching.py"), "--fda-run", args.fda_run, "--repeats", "5"]
        out["neurons"] = [py, str(BENCH / "neurons.py"), "--fda-run", args.fda_run]
        out["interventions"] = [py, str(BENCH / "interventions.py"), "--run", args.fda_run]
        out["probes"] = [py, str(BENCH / "probes.py"), "--fda-run", args.fda_run] + (
            ["--thr-run", args.thr_run] if args.thr_run else [])
    return out


def load(name: str) -> dict | None:
    path = DOCS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def training_section(record: dict, title: str) -> list[str]:
    lines = [f"## {title}", "", f"Command: `{record['command']}`. Machine: {record['machine']}, "
             f"torch {record['torch']}, precision {record['precision']}.", "",
             "| task | preset | tokens/s memlens | tokens/s plain PyTorch | memlens / plain (median, range) "
             "| memlens / HookedTransformer in a plain loop | torch.compile'd HookedTransformer tokens/s "
             "| evaluation share at the default cadence |",
             "|---|---|---|---|---|---|---|---|"]
    for r in record["results"]:
        tps = r["tokens_per_second"]
        ratio, hooked = r["ratio_vs_plain"], r["ratio_vs_hooked_plain"]
        compiled = f"{tps['hooked-plain-compiled']:,.0f}" if "hooked-plain-compiled" in tps else "not run"
        lines.append(
            f"| {r['task']} | {r['preset']} | {tps['memlens']:,.0f} | {tps['plain']:,.0f} | "
            f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f}) | "
            f"{statistics.median(hooked):.2f} | {compiled} | {r['eval_share_at_default_cadence']:.1%} |")
    lines += ["", "Evaluation share: one evaluation's measured cost times the number of evaluations "
              "at the preset's default cadence, over that plus the preset's steps at the measured "
              "seconds per step.", ""]
    if record.get("note"):
        lines += [f"Note: {record['note']}", ""]
    return lines


def growth_words(exponent: float) -> str:
    if exponent < 0.2:
        return "flat"
    if exponent < 0.8:
        return "sublinear (fixed costs still matter)"
    if exponent < 1.2:
        return "about linear"
    if exponent < 1.8:
        return "between linear and quadratic"
    return "about quadratic or faster"


def scaling_section(record: dict) -> list[str]:
    lines = ["## Scaling: training and analyses against data, model and example counts", "",
             f"Command: `{record['command']}`. Machine: {record['machine']}. FDA with 4-digit "
             "operands, two-layer models with 4 heads; training per step excludes evaluation; "
             "analyses on untrained models (time does not depend on the weights), best of 2. "
             "Growth exponent: slope of log(seconds) on log(size).", "",
             "| what | axis | sizes | seconds | growth exponent | growth |", "|---|---|---|---|---|---|"]
    for r in record["rows"]:
        secs = " / ".join(f"{t:.4f}" if t < 0.1 else f"{t:.2f}" for t in r["seconds"])
        sizes = " / ".join(f"{s:,}" for s in r["sizes"])
        lines.append(f"| {r['what']} | {r['axis']} | {sizes} | {secs} | {r['growth_exponent']:.2f} | "
                     f"{growth_words(r['growth_exponent'])} |")
    lines += ["", "Reading it: a training step does not depend on the dataset size (batches are "
              "fixed; evaluation is capped per split); every analysis grows about linearly or "
              "slower in the number of examples, and with d_model between linearly and "
              "quadratically, as the matrix products (d_model^2 parameters) take over from "
              "fixed per-call costs.", ""]
    return lines


def gpu_runs_section() -> list[str]:
    """Time to generalization and memorization of the paper presets measured on a GPU."""
    import pandas as pd

    gpu = DOCS / "gpu"
    files = sorted(gpu.glob("*.metrics.jsonl")) if gpu.exists() else []
    if not files:
        return []
    lines = ["## Paper presets on a GPU", "",
             "Commands: `bash benchmarks/gpu_paper.sh OUT` (log: docs/benchmarks/gpu/paper_runs_log.txt); "
             "each run had a fixed time limit inside one 10-minute device call, so the last row is "
             "where it was stopped.", "",
             "| run | steps done | wall s | steps/s | test >= 0.9 at | noisy memorized >= 0.5 at | >= 0.9 at | "
             "last test acc | last noisy memorized acc |", "|---|---|---|---|---|---|---|---|---|"]
    for path in files:
        df = pd.read_json(path, lines=True)
        last = df.iloc[-1]

        def at(col, thr):
            step = first_step(df, col, thr)
            if step is None:
                return "not reached"
            wall = float(df.loc[df["step"] == step, "wall_s"].iloc[0])
            return f"step {step} ({wall:.0f} s)"

        lines.append(f"| {path.name.replace('.metrics.jsonl', '')} | {int(last['step'])} | {last['wall_s']:.0f} | "
                     f"{last['step'] / max(last['wall_s'], 1e-9):.1f} | {at('test_acc', 0.9)} | "
                     f"{at('noisy_memorized_acc', 0.5)} | {at('noisy_memorized_acc', 0.9)} | "
                     f"{last['test_acc']:.3f} | {last['noisy_memorized_acc']:.3f} |")
    notes = gpu / "NOTES.md"
    if notes.exists():
        lines += ["", notes.read_text().strip()]
    return lines + [""]


def collect() -> Path:
    lines = ["# Benchmarks", "",
             "Generated by `python benchmarks/run_all.py` from the figures in docs/benchmarks/*.json; "
             "every ratio compares memlens with its baseline alternated in one process run. "
             "Per-benchmark details are in docs/benchmarks/*.md.", ""]
    headline = ["| benchmark | figure | value | goal |", "|---|---|---|---|"]
    for name in ("patching", "softmax_width", "probes", "neurons", "interventions", "backends"):
        record = load(name)
        for h in (record or {}).get("headline", []):
            headline.append(f"| {h['benchmark']} | {h['figure']} | {h['value']} | {h['goal'] or ''} |")
    times = load("analysis_times")
    if times:  # benchmarks/analysis_times.py: every analysis of one run, before -> after
        headline.append(f"| memlens analyze {times['run']}, {times['threads']} thread(s) | seconds, commit "
                        f"{times['baseline_commit'][:7]} -> now | {times['total_baseline_seconds']:.0f} -> "
                        f"{times['total_memlens_seconds']:.0f} ({times['total_baseline_seconds'] / times['total_memlens_seconds']:.2f}x) "
                        f"| <= 60 s on 2 cores |")
    # Later GPU sessions' throughput records sit beside their logs in docs/benchmarks/gpu/.
    later = [json.loads(p.read_text()) for p in sorted((DOCS / "gpu").glob("training_*.json"))]
    for record in [load("training_cpu"), load("training_cuda"), *later]:
        for r in (record or {}).get("results", []):
            ratio = statistics.median(r["ratio_vs_plain"])
            flag = " (before the fused forward; see the note below)" if record.get("note") else ""
            headline.append(f"| training {r['task']} {r['preset']} ({record['machine']}) | tokens/s memlens / "
                            f"plain PyTorch{flag} | {ratio:.2f} | >= 0.9 |")
            headline.append(f"| training {r['task']} {r['preset']} ({record['machine']}) | evaluation share "
                            f"at default cadence | {r['eval_share_at_default_cadence']:.1%} | <= 10% |")
    lines += ["## Headline figures", "", *headline, ""]
    for device, title in (("cpu", "Training throughput, CPU"), ("cuda", "Training throughput, GPU")):
        record = load(f"training_{device}")
        if record:
            lines += training_section(record, title)
    lines += gpu_runs_section()
    if load("scaling"):
        lines += scaling_section(load("scaling"))
    for name in ("analysis_times", "patching", "softmax_width", "probes", "neurons", "interventions",
                 "data_generation", "backends"):
        md = DOCS / f"{name}.md"
        if md.exists():
            body = md.read_text().strip().splitlines()
            lines += ["#" + body[0], *body[1:], ""]  # demote the page title to a section
    decisions = DOCS / "DECISIONS.md"
    if decisions.exists():
        lines += [decisions.read_text().strip(), ""]
    out = ROOT / "docs" / "benchmarks.md"
    atomic_write_text(out, "\n".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fda-run", default=None, help="trained FDA small run (patching, probes, neurons)")
    parser.add_argument("--thr-run", default=None, help="trained THR small run (probe memory)")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    parser.add_argument("--collect-only", action="store_true", help="only rewrite docs/benchmarks.md")
    args = parser.parse_args()
    available = commands(args)
    names = [] if args.collect_only else (args.only.split(",") if args.only else list(available))
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown or unavailable benchmark(s) {unknown}; available: {sorted(available)}"
                     " (patching, probes and neurons need --fda-run)")
    for name in names:
        start = time.perf_counter()
        print(f"== {name}: {' '.join(available[name][1:])}", flush=True)
        subprocess.run(available[name], check=True, cwd=ROOT)
        print(f"== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    print(f"wrote {collect()}")


if __name__ == "__main__":
    main()
