"""Neuron activation table at 10,000 examples: memlens against caching the whole run.

    .venv/bin/python benchmarks/neurons.py --fda-run RUN_DIR [--n 10000] [--repeats 3]

memlens: ``neuron_table`` (chunks of 1,024 sequences, only ``mlp.hook_post``, only the
answer-predicting positions). Baseline: what one writes first, ``model.run_with_cache(tokens)``
on all examples and the MLP activations read from it. Same values; time ratio; the peak memory
each adds (fresh processes). Writes docs/benchmarks/neurons.json and .md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TABLE_HEADER, command_line, compare, peak_memory_mb, report_peak_of, write_doc, write_json  # noqa: E402

from memlens import load_run, neuron_table  # noqa: E402
from memlens.analysis.selection import subset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fda-run", required=True)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-probe", choices=("none", "memlens", "baseline"), default=None,
                        help=argparse.SUPPRESS)  # internal: one path in a fresh process
    args = parser.parse_args()
    torch.set_num_threads(2)
    run = load_run(args.fda_run)
    model = run.model
    examples = subset(run.dataset.train, args.n, 0)  # clean and noisy training examples
    names = [f"blocks.{layer}.mlp.hook_post" for layer in range(model.cfg.n_layers)]

    def ours():
        return neuron_table(model, examples).acts

    def baseline():
        with torch.no_grad():
            _, cache = model.run_with_cache(examples.tokens)
        return torch.stack([cache[name][:, examples.answer_pos] for name in names], 1)

    if args.memory_probe is not None:
        report_peak_of({"none": lambda: None, "memlens": ours, "baseline": baseline}[args.memory_probe])
        return

    comparison, a, b = compare(f"neuron table, {len(examples):,} examples x {model.cfg.n_layers} layers "
                               f"(FDA small)", ours, baseline, repeats=args.repeats)
    diff = float((a - b).abs().max())
    probe = [__file__, "--fda-run", args.fda_run, "--n", str(args.n), "--memory-probe"]
    mem_ours, mem_base = peak_memory_mb(*probe, "memlens"), peak_memory_mb(*probe, "baseline")
    table_mib = a.numel() * 4 / 2**20
    throughput = len(examples) / statistics.median(comparison.memlens_seconds)
    print(comparison.row())
    print(f"max |difference| {diff:.1e}; peak MiB added: memlens {mem_ours:.0f} (the table itself "
          f"{table_mib:.0f}), full cache {mem_base:.0f}; {throughput:,.0f} examples/s")
    text = "\n".join([
        "# Neuron activation table: chunked, only what is needed, versus caching the whole run", "",
        f"Command: `{command_line()}`", f"Machine: {platform.machine()}, torch threads 2.", "",
        TABLE_HEADER, comparison.row(), "",
        f"Values: max absolute difference {diff:.1e}. Throughput: {throughput:,.0f} examples/s. "
        f"Peak resident memory added (fresh process, sampled every 0.5 ms): memlens {mem_ours:.0f} MiB "
        f"(the table itself is {table_mib:.0f} MiB), `run_with_cache` on all examples {mem_base:.0f} MiB.", "",
    ])
    print(write_doc("neurons.md", text))
    write_json("neurons.json", {
        "command": command_line(), "machine": f"{platform.machine()}, torch threads 2",
        "headline": [{"benchmark": comparison.name, "figure": "speed-up vs run_with_cache on everything",
                      "value": round(statistics.median(comparison.ratios), 2), "goal": None},
                     {"benchmark": comparison.name, "figure": "peak MiB added, memlens / full cache",
                      "value": f"{mem_ours:.0f} / {mem_base:.0f}", "goal": None}],
        "examples_per_second": throughput, "max_abs_difference": diff,
        "peak_added_mib": {"memlens": mem_ours, "baseline": mem_base, "table": table_mib}})


if __name__ == "__main__":
    main()
