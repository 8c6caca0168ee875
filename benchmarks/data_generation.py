"""How long dataset generation takes (issue: foundation; goal: under 5 s each on CI's CPU).

    .venv/bin/python benchmarks/data_generation.py

Times the default FDA training set at 100,000 examples and the THR presets, median of 5 runs,
and writes docs/benchmarks/data_generation.md.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

from memlens.io import atomic_write_json, atomic_write_text
from memlens.tasks import make_task

CASES = [
    ("fda", "small", {"n_train": 100_000}, "FDA, 2 x 4 digits, 100,000 train + 2,000 test"),
    ("fda", "paper", {}, "FDA paper preset"),
    ("thr", "small", {}, "THR small preset (E=200, R=K=20, phi=18)"),
    ("thr", "paper", {}, "THR paper preset (E=2000, R=200, K=20, phi=18)"),
]


def time_case(task_name: str, preset: str, overrides: dict, repeats: int = 5) -> tuple[float, int]:
    task = make_task(task_name, preset, **overrides)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        data = task.generate(seed=0)
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(data.train) + len(data.test)


def main() -> None:
    torch.set_num_threads(2)
    rows, record = [], []
    for task_name, preset, overrides, label in CASES:
        seconds, n = time_case(task_name, preset, overrides)
        rows.append(f"| {label} | {n:,} | {seconds:.3f} |")
        record.append({"dataset": label, "examples": n, "seconds": seconds})
        print(rows[-1], flush=True)
    text = "\n".join([
        "# Dataset generation time",
        "",
        "Command: `.venv/bin/python benchmarks/data_generation.py` (median of 5 runs, seed 0).",
        f"Machine: {platform.processor() or platform.machine()}, torch threads 2.",
        "",
        "| dataset | examples (train + test) | seconds |",
        "|---|---|---|",
        *rows,
        "",
    ])
    docs = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
    atomic_write_text(docs / "data_generation.md", text)
    atomic_write_json(docs / "data_generation.json", {
        "command": "python benchmarks/data_generation.py", "machine": f"{platform.machine()}, torch threads 2",
        "headline": [], "cases": record})


if __name__ == "__main__":
    main()
