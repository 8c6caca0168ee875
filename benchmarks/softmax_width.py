"""torch's CPU softmax by row width, and the padding the suffix runs use against it.

    .venv/bin/python benchmarks/softmax_width.py [--threads 2] [--repeats 30]

The same number of float32 elements (about 320,000, an attention score tensor of a suffix run
on 1,000 examples) is soft-maxed in rows of 5 to 33 and 64 floats. Then, for the suffix runs'
shape (1000, 4 heads, 5 queries, 15 keys), the padded softmax of
memlens.training.fast_forward (rows padded to 16 with -inf, then sliced back) is alternated with
the plain one in one process: the ratio is the speed-up of what the engine does now against what
it replaced, and the largest difference of their outputs is reported. Writes
docs/benchmarks/softmax_width.md and .json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, write_doc, write_json  # noqa: E402

from memlens.training.fast_forward import SOFTMAX_FAST_WIDTH  # noqa: E402

ELEMENTS = 320_000


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def padded_softmax(scores: torch.Tensor) -> torch.Tensor:
    """As the suffix runs compute it: padded to SOFTMAX_FAST_WIDTH keys, then sliced back."""
    n_keys = scores.shape[-1]
    return F.pad(scores, (0, SOFTMAX_FAST_WIDTH - n_keys), value=float("-inf")).softmax(-1)[..., :n_keys]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    for name in ("threads", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} is invalid: expected an integer >= 1")
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    widths = list(range(5, 34)) + [64]
    by_width = {}
    for width in widths:
        x = torch.randn(ELEMENTS // width, width, generator=generator)
        by_width[width] = median_ms(lambda: x.softmax(-1), args.repeats)
        print(f"width {width}: {by_width[width]:.3f} ms", flush=True)
    scores = torch.randn(1000, 4, 5, 15, generator=generator)
    plain_ms, padded_ms = [], []
    for _ in range(args.repeats):  # alternated, so both see the same machine
        plain_ms.append(median_ms(lambda: scores.softmax(-1), 3))
        padded_ms.append(median_ms(lambda: padded_softmax(scores), 3))
    difference = float((padded_softmax(scores) - scores.softmax(-1)).abs().max())
    ratio = statistics.median(plain_ms) / statistics.median(padded_ms)
    machine = f"{platform.machine()}, torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, " \
              f"{args.threads} thread(s)"
    rows = "\n".join(f"| {w} | {by_width[w]:.3f} |" for w in widths)
    text = "\n".join([
        "# torch's CPU softmax by row width",
        "",
        f"Command: `{command_line()}`. Machine: {machine}.",
        "",
        f"Softmax of {ELEMENTS:,} float32 elements in rows of each width (median of {args.repeats}):",
        "",
        "| row width | ms |",
        "|---|---|",
        rows,
        "",
        f"The suffix runs' attention scores, (1000, 4, 5, 15): plain softmax "
        f"{statistics.median(plain_ms):.3f} ms, padded to {SOFTMAX_FAST_WIDTH} keys and sliced back "
        f"{statistics.median(padded_ms):.3f} ms, a speed-up of {ratio:.2f}x (alternated, {args.repeats} "
        f"pairs); largest difference of the outputs {difference:.1e} (float rounding).",
        "",
    ])
    write_json("softmax_width.json", {
        "command": command_line(), "machine": machine, "ms_by_width": by_width,
        "headline": [{"benchmark": "suffix attention softmax, (1000, 4, 5, 15)",
                      "figure": f"speed-up, padded to {SOFTMAX_FAST_WIDTH} keys vs plain", "value": round(ratio, 2),
                      "goal": ""}],
        "max_abs_difference": difference})
    print(write_doc("softmax_width.md", text))


if __name__ == "__main__":
    main()
