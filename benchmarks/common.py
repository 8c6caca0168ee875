"""Benchmark helpers: alternate the memlens path and its baseline in one process, report the
median time ratio and its spread, measure peak memory in a forked child, write markdown."""

from __future__ import annotations

import gc
import resource
import subprocess
import sys
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from memlens.io import atomic_write_text

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


@dataclass
class Comparison:
    name: str
    memlens_seconds: list[float]
    baseline_seconds: list[float]

    @property
    def ratios(self) -> list[float]:
        """Baseline time over memlens time, per alternated pair (> 1: memlens is faster)."""
        return [b / m for m, b in zip(self.memlens_seconds, self.baseline_seconds)]

    def row(self) -> str:
        r = self.ratios
        spread = f"{min(r):.2f}-{max(r):.2f}" if len(r) > 1 else "n/a"
        return (f"| {self.name} | {statistics.median(self.memlens_seconds):.3f} | "
                f"{statistics.median(self.baseline_seconds):.3f} | {statistics.median(r):.2f} | "
                f"{spread} | {len(r)} |")


TABLE_HEADER = ("| benchmark | memlens s (median) | baseline s (median) | speed-up (median) | "
                "speed-up range | pairs |\n|---|---|---|---|---|---|")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def compare(name: str, memlens_fn: Callable[[], Any], baseline_fn: Callable[[], Any],
            repeats: int = 3) -> tuple[Comparison, Any, Any]:
    """Run memlens and baseline alternately ``repeats`` times; returns timings and last outputs."""
    ours, theirs, out_m, out_b = [], [], None, None
    for i in range(repeats):
        order = [("m", memlens_fn), ("b", baseline_fn)] if i % 2 == 0 else [("b", baseline_fn), ("m", memlens_fn)]
        for tag, fn in order:
            seconds, out = timed(fn)
            if tag == "m":
                ours.append(seconds)
                out_m = out
            else:
                theirs.append(seconds)
                out_b = out
    return Comparison(name, ours, theirs), out_m, out_b


def peak_memory_mb(script: str, *args: str) -> float:
    """Peak resident memory of a fresh Python process running ``script *args`` (MiB).

    A fresh process, not a fork (torch's thread pools do not survive a fork). The script must
    end by calling :func:`report_peak`; run it once with a no-op mode to get the baseline.
    """
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("PEAK_KB "):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{script} {args} did not report its peak memory")


def report_peak() -> None:
    """Print this process's peak resident memory for :func:`peak_memory_mb`."""
    print(f"PEAK_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", flush=True)


def write_doc(filename: str, text: str) -> Path:
    path = DOCS / filename
    atomic_write_text(path, text)
    return path
