"""Benchmark helpers: alternate the memlens path and its baseline in one process, report the
median time ratio and its spread, measure the peak memory a call adds in a fresh process,
write markdown."""

from __future__ import annotations

import ctypes
import gc
import resource
import subprocess
import sys
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from memlens.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks"


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
    """Memory a fresh Python process running ``script *args`` reports (MiB).

    A fresh process, not a fork (torch's thread pools do not survive a fork). The script must
    end by calling :func:`report_peak` (its lifetime peak) or :func:`report_peak_of` (the peak
    added by one call, which is what a comparison wants).
    """
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith(("PEAK_KB ", "PEAK_ADDED_KB ")):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{script} {args} did not report its peak memory")


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (resource.getpagesize() // 1024)


def _release_free_memory() -> None:
    """Return freed heap to the OS, so that RSS before a call is what is really in use."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: the figure is then an upper bound of what the call needs
        pass


def peak_added_kb(fn: Callable[[], Any], interval_s: float = 0.0005) -> tuple[int, Any]:
    """(peak resident memory during ``fn()`` minus that before it, in KiB; ``fn``'s result).

    A thread samples /proc/self/statm every ``interval_s``: the process's lifetime peak
    (ru_maxrss) would be set by loading the model and data, not by the call measured.
    """
    _release_free_memory()
    before = _rss_kb()
    peak, done = before, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_kb())
            time.sleep(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out = fn()
    finally:
        done.set()
        thread.join()
    return max(peak, _rss_kb()) - before, out


def report_peak_of(fn: Callable[[], Any]) -> None:
    """Print the peak memory ``fn()`` adds, for :func:`peak_memory_mb`."""
    added, _ = peak_added_kb(fn)
    print(f"PEAK_ADDED_KB {added}", flush=True)


def report_peak() -> None:
    """Print this process's peak resident memory for :func:`peak_memory_mb`."""
    print(f"PEAK_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", flush=True)


def write_doc(filename: str, text: str) -> Path:
    path = DOCS / filename
    atomic_write_text(path, text)
    return path


def write_json(filename: str, record: dict) -> Path:
    """The figures of one benchmark, for benchmarks/run_all.py to collect into docs/benchmarks.md."""
    path = DOCS / filename
    atomic_write_json(path, record)
    return path


def command_line() -> str:
    """How this benchmark was started, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])
