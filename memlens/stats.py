"""Hierarchical bootstrap intervals and three-way verdicts for the claims scorecard.

A statistic is computed per seed from that seed's units (examples, neurons, evaluation points).
:func:`hierarchical_bootstrap` draws seeds with replacement, then, within each drawn seed, its
units with replacement (the statistic function does that second draw when given a generator),
and averages over the drawn seeds; the 95% interval is the percentile interval of those means,
so it stays inside the range the statistic can take. :func:`verdict` turns an interval and a
threshold into ``holds`` / ``does not hold`` / ``inconclusive``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DIRECTIONS = (">=", ">", "<=", "<")
N_BOOT = 2000


def resample(n: int, rng: np.random.Generator | None) -> np.ndarray:
    """Indices ``0..n-1`` (``rng=None``) or ``n`` draws with replacement.

    >>> resample(3, None).tolist()
    [0, 1, 2]
    >>> len(resample(5, np.random.default_rng(0)))
    5
    """
    return np.arange(n) if rng is None else rng.integers(0, n, size=n)


def hierarchical_bootstrap(data: Sequence[Any], statistic: Callable[[Any, np.random.Generator | None], float],
                           n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Point estimate (mean over seeds of ``statistic(d, None)``), per-seed values and a 95%
    percentile interval from resampling seeds, then units within each seed.

    ``statistic(d, rng)`` returns the seed's value on all its units when ``rng`` is None and on a
    within-seed resample drawn from ``rng`` otherwise.

    >>> seeds = [np.array([1, 1, 0, 1]), np.array([1, 0, 1, 1])]
    >>> out = hierarchical_bootstrap(seeds, lambda d, rng: float(d[resample(len(d), rng)].mean()), n_boot=200)
    >>> out["point"], 0 <= out["ci95"][0] <= out["point"] <= out["ci95"][1] <= 1
    (0.75, True)
    """
    if not data:
        raise ValueError("no seeds to bootstrap")
    per_seed = [float(statistic(d, None)) for d in data]
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        drawn = rng.integers(0, len(data), size=len(data))
        means[b] = np.mean([statistic(data[i], rng) for i in drawn])
    finite = means[np.isfinite(means)]
    lo, hi = (np.percentile(finite, [2.5, 97.5]) if len(finite) else (np.nan, np.nan))
    return {"point": float(np.mean(per_seed)), "per_seed": per_seed, "ci95": [float(lo), float(hi)]}


def passes(value: float, threshold: float, direction: str) -> bool:
    return {">=": value >= threshold, ">": value > threshold,
            "<=": value <= threshold, "<": value < threshold}[direction]


def verdict(ci95: Sequence[float | int], threshold: float | int, direction: str) -> str:
    """``holds`` when the whole interval passes the threshold, ``does not hold`` when none of
    it does, ``inconclusive`` otherwise.

    >>> verdict([0.92, 0.97], 0.9, ">="), verdict([0.5, 0.8], 0.9, ">="), verdict([0.85, 0.95], 0.9, ">=")
    ('holds', 'does not hold', 'inconclusive')
    >>> verdict([0.0, 0.02], 0.05, "<=")
    'holds'
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} is invalid: expected one of {DIRECTIONS}")
    lo, hi = ci95
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "inconclusive"
    if passes(lo, threshold, direction) and passes(hi, threshold, direction):
        return "holds"
    if not passes(lo, threshold, direction) and not passes(hi, threshold, direction):
        return "does not hold"
    return "inconclusive"
