"""Label noise: which training examples get a wrong label, and how a wrong label is drawn.

The number of noisy examples is exactly ``round(rate * n)`` (Python's round, half to even), and the
examples are chosen with the seed. Wrong labels never equal the true one.
"""

from __future__ import annotations

import numpy as np

NOISE_MODES = {"fda": ("random", "digit"), "thr": ("random",)}


def noisy_count(n: int, rate: float) -> int:
    """How many of ``n`` examples get a wrong label.

    >>> noisy_count(10_000, 0.05)
    500
    """
    return int(round(rate * n))


def choose_noisy(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask over ``n`` examples with exactly ``noisy_count(n, rate)`` True entries.

    >>> mask = choose_noisy(100, 0.1, np.random.default_rng(0))
    >>> int(mask.sum())
    10
    """
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=noisy_count(n, rate), replace=False)] = True
    return mask


def draw_other(true_values: np.ndarray, n_values: int, rng: np.random.Generator,
               also_avoid: np.ndarray | None = None) -> np.ndarray:
    """For each true value in ``[0, n_values)``, a uniform draw from the other values.

    With ``also_avoid`` (one value per row, possibly equal to the true value), that value is
    excluded too. Sampling is exact, not by rejection: draw among the allowed count, then skip
    over the excluded values in increasing order.

    >>> rng = np.random.default_rng(0)
    >>> out = draw_other(np.array([3, 3, 3]), 5, rng, also_avoid=np.array([4, 3, 0]))
    >>> bool(((out != 3) & (out != np.array([4, 3, 0]))).all())
    True
    """
    true_values = np.asarray(true_values, dtype=np.int64)
    avoid = true_values if also_avoid is None else np.asarray(also_avoid, dtype=np.int64)
    low = np.minimum(true_values, avoid)
    high = np.maximum(true_values, avoid)
    n_excluded = np.where(low == high, 1, 2)
    draw = rng.integers(0, n_values - n_excluded)
    draw = draw + (draw >= low)
    draw = draw + ((draw >= high) & (low != high))
    return draw
