"""Claim 7: circuits for clean generalization and for noisy memorization, and how much they share.

:func:`circuit_study` implements the pre-registered statistic of docs/claims.md (claim 7; the
method is in docs/circuits.md). For each group (clean, noisy) the same number of examples is
drawn; each group is split into two halves and each half is corrupted by a seeded derangement
within it (only the prompt, every position before the first answer token, is replaced; the
teacher-forced answer tokens stay). The metric of an example is its label's logit minus the
corrupting example's label's logit at the answer-predicting positions, averaged over answer
slots.

Edges are scored by EAP and EAP-IG; both are correlated with exact single-edge patching and the
better one grows four circuits from the logits back (all clean examples, the two clean halves,
the noisy examples), each to the smallest size whose exact faithfulness reaches the target.
7a is the clean/noisy IoU between a floor (random connected circuits of the same sizes) and a
ceiling (the two clean halves' circuits); 7b is the clean circuit's faithfulness on the noisy
examples over the noisy circuit's own.

The summary holds what the scorecard needs to recompute both statistics under resampling without
the model (:func:`overlap_statistic`, :func:`cross_faithfulness_statistic`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from memlens.analysis.circuits import (
    POSITION_MODES, EdgeIndex, Graph, attribute, growth_order, iou, patched_logits, random_circuit,
    writer_outputs,
)
from memlens.analysis.common import AnalysisError, Result, chunks
from memlens.analysis.common import check_examples as check_group
from memlens.tasks.base import Examples

SCHEMA = "memlens.circuit_study/1"
METHODS = ("eap", "eap-ig")
BLOCK_GROUPS = ("clean_a", "clean_b", "noisy")
CIRCUITS = ("clean", "noisy", "clean_a", "clean_b")


# --- the two statistics, from the summary alone -------------------------------------------

def _summary_of(data: dict) -> dict:
    """Accept the summary itself or a whole ``circuits.json`` record holding it."""
    return data["summary"] if "schema" not in data and "summary" in data else data


def _resampled_blocks(attribution: dict, rng: np.random.Generator | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for group in BLOCK_GROUPS:
        sums = np.asarray(attribution["blocks"][group], dtype=float)
        sizes = np.asarray(attribution["block_sizes"][group], dtype=float)
        if rng is not None:
            pick = rng.integers(0, len(sizes), len(sizes))
            sums, sizes = sums[pick], sizes[pick]
        out[group] = (sums, sizes)
    return out


def circuit_scores(attribution: dict, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Mean edge score per circuit's examples, from the summary's block sums (resampled per
    group with ``rng``); ``clean`` pools the two clean halves.

    >>> att = {"blocks": {"clean_a": [[2.0, 0.0]], "clean_b": [[0.0, 4.0]], "noisy": [[1.0, 1.0]]},
    ...        "block_sizes": {"clean_a": [2], "clean_b": [2], "noisy": [1]}}
    >>> circuit_scores(att)["clean"].tolist()
    [0.5, 1.0]
    """
    blocks = _resampled_blocks(attribution, rng)
    scores = {group: sums.sum(0) / sizes.sum() for group, (sums, sizes) in blocks.items()}
    (sa, na), (sb, nb) = blocks["clean_a"], blocks["clean_b"]
    scores["clean"] = np.concatenate([sa, sb]).sum(0) / np.concatenate([na, nb]).sum()
    return scores


def grown_circuits(summary: dict, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """The four circuits (edge indices in joining order) regrown from the summary's scores to
    their recorded sizes."""
    graph = summary["graph"]
    writer, reader = np.asarray(graph["edge_writer"]), np.asarray(graph["edge_reader"])
    scores = circuit_scores(summary["attribution"], rng)
    return {name: growth_order(scores[name], writer, reader, graph["root"], summary["circuits"][name]["size"])
            for name in CIRCUITS}


def overlap_statistic(summary: dict, rng: np.random.Generator | None = None) -> float:
    """7a: ``(IoU(clean, noisy) - floor) / (ceiling - floor)``, ceiling = IoU of the two clean
    halves' circuits. ``rng=None``: the analysis' own value; with an ``rng``: block sums are
    resampled with replacement within each group (clean half A, half B, noisy), the circuits
    regrown to their recorded sizes, the floor kept. NaN when the ceiling is not above the
    floor.

    >>> import numpy as np
    >>> s = {"graph": {"edge_writer": [1, 0, 0], "edge_reader": [2, 2, 1], "root": 2},
    ...      "attribution": {"blocks": {g: [[3.0, 2.0, 1.0]] for g in ("clean_a", "clean_b", "noisy")},
    ...                      "block_sizes": {g: [1] for g in ("clean_a", "clean_b", "noisy")}},
    ...      "circuits": {c: {"size": 2} for c in ("clean", "noisy", "clean_a", "clean_b")},
    ...      "overlap": {"floor": 0.5}}
    >>> overlap_statistic(s), overlap_statistic(s, np.random.default_rng(0))
    (1.0, 1.0)
    """
    summary = _summary_of(summary)
    parts = overlap_parts(summary, rng)
    return parts["normalized"]


def overlap_parts(summary: dict, rng: np.random.Generator | None = None) -> dict[str, float]:
    """IoU of clean and noisy circuits, the floor, the ceiling and the normalized overlap."""
    summary = _summary_of(summary)
    circuits = grown_circuits(summary, rng)
    floor = float(summary["overlap"]["floor"])
    value = iou(circuits["clean"], circuits["noisy"])
    ceiling = iou(circuits["clean_a"], circuits["clean_b"])
    normalized = (value - floor) / (ceiling - floor) if ceiling > floor else math.nan
    return {"iou": value, "floor": floor, "ceiling": ceiling, "normalized": normalized}


def cross_faithfulness_statistic(summary: dict, rng: np.random.Generator | None = None) -> float:
    """7b: the clean circuit's faithfulness on the noisy examples over the noisy circuit's own,
    ``mean(M(clean circuit) - M(corrupt)) / mean(M(noisy circuit) - M(corrupt))`` (the shared
    denominator ``M(clean) - M(corrupt)`` cancels). ``rng=None``: the analysis' own value; with
    an ``rng``: noisy examples resampled with replacement (the circuits fixed). NaN when the
    noisy circuit recovers nothing.

    >>> s = {"noisy_metric": {"clean": [2.0, 2.0], "corrupt": [0.0, 0.0],
    ...                       "clean_circuit": [1.0, 0.6], "noisy_circuit": [2.0, 1.6]}}
    >>> round(cross_faithfulness_statistic(s), 6)
    0.444444
    """
    metric = _summary_of(summary)["noisy_metric"]
    corrupt = np.asarray(metric["corrupt"], dtype=float)
    by_clean = np.asarray(metric["clean_circuit"], dtype=float)
    by_noisy = np.asarray(metric["noisy_circuit"], dtype=float)
    if rng is not None:
        pick = rng.integers(0, len(corrupt), len(corrupt))
        corrupt, by_clean, by_noisy = corrupt[pick], by_clean[pick], by_noisy[pick]
    own = float(np.mean(by_noisy - corrupt))
    return float(np.mean(by_clean - corrupt)) / own if own != 0 else math.nan


# --- searching the smallest faithful size --------------------------------------------------

def geometric_sizes(n_edges: int) -> list[int]:
    """1, 2, 4, ... and ``n_edges`` itself.

    >>> geometric_sizes(10)
    [1, 2, 4, 8, 10]
    """
    sizes = [1 << i for i in range(max(1, n_edges).bit_length()) if 1 << i < n_edges]
    return sizes + [n_edges]


def smallest_faithful_sizes(evaluate: Callable[[dict[str, int]], dict[str, float]], names: list[str],
                            n_edges: int, target: float) -> dict[str, dict]:
    """For each circuit name, the smallest size whose faithfulness reaches ``target``:
    geometric sizes in ascending order until one passes, then bisection between the last
    failing and the first passing size (faithfulness need not be monotone, so the size found
    is one that passes right after one that fails). ``evaluate({name: size})`` returns
    ``{name: faithfulness}`` for all names at once (one batched run). Returns per name
    ``{"size", "faithfulness", "search": [[size, faithfulness], ...]}``.

    >>> curve = lambda k: min(1.0, k / 50)
    >>> found = smallest_faithful_sizes(lambda ask: {n: curve(k) for n, k in ask.items()}, ["a"], 100, 0.8)
    >>> found["a"]["size"], found["a"]["faithfulness"]
    (40, 0.8)
    """
    grid = geometric_sizes(n_edges)
    trace: dict[str, dict[int, float]] = {name: {} for name in names}
    bounds: dict[str, list[int]] = {}
    step = {name: 0 for name in names}
    while len(bounds) < len(names):  # ascending grid, all unfinished circuits in one batch
        ask = {name: grid[step[name]] for name in names if name not in bounds}
        for name, value in evaluate(ask).items():
            trace[name][ask[name]] = value
            if value >= target:
                bounds[name] = [grid[step[name] - 1] if step[name] else 0, ask[name]]
            elif ask[name] == n_edges:
                raise AnalysisError(f"circuit {name!r}: even all {n_edges} edges recover only "
                                    f"{value:.4f} of the metric (< {target}): exact patching is broken")
            step[name] += 1
    while True:
        ask = {name: (lo + hi) // 2 for name, (lo, hi) in bounds.items() if hi - lo > 1}
        if not ask:
            break
        for name, value in evaluate(ask).items():
            trace[name][ask[name]] = value
            bounds[name][int(value >= target)] = ask[name]  # pass: new hi; fail: new lo
    return {name: {"size": hi, "faithfulness": trace[name][hi],
                   "search": [[k, trace[name][k]] for k in sorted(trace[name])]}
            for name, (_, hi) in bounds.items()}


# --- the examples and their corruption ------------------------------------------------------

def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """``perm[i] != i``: example ``i`` is corrupted by example ``perm[i]`` (one random cycle).

    >>> p = derangement(5, np.random.default_rng(0))
    >>> sorted(p.tolist()), bool((p != np.arange(5)).all())
    ([0, 1, 2, 3, 4], True)
    """
    order = rng.permutation(n)
    perm = np.empty(n, dtype=int)
    perm[order] = np.roll(order, -1)
    return perm


@dataclass
class _Pool:
    """Every row the study runs, clean then noisy: tokens, corrupted tokens (the partner's
    prompt, the own answer tokens), labels, the partner's labels; ``rows`` names the groups."""

    tokens: Tensor
    corrupt: Tensor
    labels: Tensor
    other: Tensor
    answer_pos: Tensor
    rows: dict[str, np.ndarray]

    def metric(self, rows: np.ndarray) -> Callable[[Tensor], Tensor]:
        """Per example: label logit minus the partner's label logit, mean over answer slots."""
        labels, other = self.labels[torch.as_tensor(rows)], self.other[torch.as_tensor(rows)]

        def metric(logits: Tensor) -> Tensor:
            at = logits[:, self.answer_pos].float()
            own = at.gather(-1, labels.to(at.device)[..., None])
            theirs = at.gather(-1, other.to(at.device)[..., None])
            return (own - theirs)[..., 0].mean(-1)
        return metric


def _pool(clean: Examples, noisy: Examples, n: int, seed: int) -> _Pool:
    cut = int(clean.answer_token_pos[0])  # prompt: every position before the first answer token
    n_a = (n + 1) // 2
    parts, rows, start = [], {}, 0
    for name, ex in (("clean", clean), ("noisy", noisy)):
        # The same draws for both groups: identical groups get identical corruptions.
        rng = np.random.default_rng([seed, 7])
        pick = torch.as_tensor(rng.permutation(len(ex))[:n])
        partner = torch.as_tensor(np.concatenate([derangement(n_a, rng), n_a + derangement(n - n_a, rng)]))
        tokens = ex.tokens[pick]
        corrupt = tokens.clone()
        corrupt[:, :cut] = tokens[partner, :cut]
        labels = ex.labels[pick]
        parts.append((tokens, corrupt, labels, labels[partner]))
        rows[f"{name}_a"] = np.arange(start, start + n_a)
        rows[f"{name}_b"] = np.arange(start + n_a, start + n)
        rows[name] = np.arange(start, start + n)
        start += n
    tokens, corrupt, labels, other = (torch.cat(x) for x in zip(*parts))
    return _Pool(tokens, corrupt, labels, other, clean.answer_pos, rows)


# --- running the model ----------------------------------------------------------------------

class _Runner:
    """Exact circuit runs on the pool: a job is (rows, removed-edge mask); jobs share forwards."""

    def __init__(self, model, pool: _Pool, index: EdgeIndex, chunk_size: int):
        self.model, self.pool, self.index, self.chunk_size = model, pool, index, chunk_size
        self.corrupt_writers, self.clean_writers = (
            torch.cat([writer_outputs(model, tokens[s]) for s in chunks(len(tokens), chunk_size)])
            for tokens in (pool.corrupt, pool.tokens))

    def mask(self, kept_edges: np.ndarray) -> Tensor:
        return self.index.removed_mask(self.index.kept_from_set(kept_edges.tolist()))

    def run(self, jobs: list[tuple[np.ndarray, Tensor]]) -> list[np.ndarray]:
        """Per job: the metric of each of its rows with its edges removed."""
        if not jobs:
            return []
        rows = np.concatenate([r for r, _ in jobs])
        which = torch.as_tensor(np.repeat(np.arange(len(jobs)), [len(r) for r, _ in jobs]))
        masks = torch.stack([m for _, m in jobs])
        out = np.empty(len(rows))
        for s in chunks(len(rows), self.chunk_size):
            r = torch.as_tensor(rows[s])
            logits = patched_logits(self.model, self.pool.tokens[r], self.corrupt_writers[r], masks[which[s]],
                                    self.clean_writers[r])
            out[s] = self.pool.metric(rows[s])(logits).double().cpu().numpy()
        return np.split(out, np.cumsum([len(r) for r, _ in jobs])[:-1])


def _attribution(model, pool: _Pool, index: EdgeIndex, steps: int, chunk_size: int) -> dict[str, np.ndarray]:
    """Per row and edge: EAP and EAP-IG scores; per row: the metric clean and corrupted."""
    out: dict[str, list] = {"eap": [], "eap-ig": [], "clean": [], "corrupt": []}
    for s in chunks(len(pool.tokens), chunk_size):
        rows = np.arange(s.start, s.stop)
        att = attribute(model, pool.tokens[s], pool.corrupt[s], pool.metric(rows), steps=steps,
                        chunk_size=chunk_size)
        out["eap"].append(index.flatten(att.eap).double().numpy())
        out["eap-ig"].append(index.flatten(att.eap_ig).double().numpy())
        out["clean"].append(att.metric_clean.double().numpy())
        out["corrupt"].append(att.metric_corrupt.double().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def _check_edges(per_row: dict[str, np.ndarray], rows: list[np.ndarray], n_edges: int, n_sample: int,
                 n_top: int, rng: np.random.Generator) -> np.ndarray:
    """All edges when few, else a seeded sample plus the top edges by |score| (either method)."""
    if n_edges <= n_sample:
        return np.arange(n_edges)
    chosen = set(rng.choice(n_edges, n_sample, replace=False).tolist())
    for method in METHODS:
        score = np.abs(np.concatenate([per_row[method][r] for r in rows]).mean(0))
        chosen |= set(np.argsort(-score, kind="stable")[:n_top].tolist())
    return np.array(sorted(chosen))


def _correlations(runner: _Runner, per_row: dict[str, np.ndarray], check_rows: dict[str, np.ndarray],
                  n_sample: int, n_top: int, rng: np.random.Generator) -> dict:
    """Pearson r of each method's scores with exact single-edge patching, per group."""
    index = runner.index
    edges = _check_edges(per_row, list(check_rows.values()), index.n_edges, n_sample, n_top, rng)
    # Late readers first: batches that patch only late layers skip the early ones.
    edges = edges[np.argsort(-index.edge_reader_layer()[edges], kind="stable")]
    every = np.ones(index.n_edges, dtype=bool)
    jobs = []
    for rows in check_rows.values():
        jobs.append((rows, index.removed_mask(every)))
        for e in edges:
            kept = every.copy()
            kept[e] = False
            jobs.append((rows, index.removed_mask(kept)))
    results = runner.run(jobs)
    out: dict = {method: {} for method in METHODS}
    for g, (group, rows) in enumerate(check_rows.items()):
        block = results[g * (len(edges) + 1): (g + 1) * (len(edges) + 1)]
        exact = np.array([r.mean() for r in block[1:]]) - block[0].mean()
        for method in METHODS:
            out[method][group] = _pearson(per_row[method][rows][:, edges].mean(0), exact)
    for method in METHODS:
        values = [v for v in out[method].values() if not math.isnan(v)]
        out[method]["mean"] = float(np.mean(values)) if values else math.nan
    out["n_edges"] = len(edges)
    out["n_examples"] = {group: len(rows) for group, rows in check_rows.items()}
    return out


def _choose(attribution: str, correlation: dict) -> str:
    if attribution != "auto":
        return attribution
    r_eap, r_ig = correlation["eap"]["mean"], correlation["eap-ig"]["mean"]
    if math.isnan(r_ig):
        return "eap"
    return "eap-ig" if math.isnan(r_eap) or r_ig >= r_eap else "eap"


def _short(x: np.ndarray, digits: int = 6) -> list:
    """Floats to ``digits`` significant digits (short JSON); the analysis uses these values."""
    return [[float(f"{v:.{digits}g}") for v in row] for row in np.atleast_2d(x)]


def _blocks(per_row: np.ndarray, rows: dict[str, np.ndarray], n_blocks: int) -> tuple[dict, dict]:
    sums, sizes = {}, {}
    for group in BLOCK_GROUPS:
        parts = np.array_split(rows[group], min(n_blocks, len(rows[group])))
        sums[group] = _short(np.stack([per_row[p].sum(0) for p in parts]))
        sizes[group] = [len(p) for p in parts]
    return sums, sizes


# --- the result -----------------------------------------------------------------------------

@dataclass
class CircuitStudyResult(Result):
    """Claim 7's circuits: ``summary()`` (the JSON the scorecard reads, see docs/circuits.md),
    ``to_frame()`` (one row per edge and circuit) and ``figure()`` (faithfulness by size)."""

    summary_: dict
    edges: pd.DataFrame
    name = "circuits"

    def to_frame(self) -> pd.DataFrame:
        return self.edges

    def summary(self) -> dict:
        return self.summary_

    @staticmethod
    def render(data: dict):
        """Faithfulness against circuit size for each circuit, with the target marked."""
        import plotly.graph_objects as go

        summary = _summary_of(data)
        fig = go.Figure()
        for name in CIRCUITS:
            found = summary["circuits"][name]
            size, value = zip(*found["search"])
            fig.add_trace(go.Scatter(x=size, y=value, mode="lines+markers",
                                     name=f"{name} (size {found['size']})"))
        fig.add_hline(y=summary["target_faithfulness"], line_dash="dot")
        ov, cf = summary["overlap"], summary["cross_faithfulness"]
        fmt = lambda v: "undefined" if v is None else f"{v:.2f}"  # noqa: E731 (e.g. a zero range)
        fig.update_layout(title=f"Circuit faithfulness by size ({summary['method']}): normalized "
                                f"overlap {fmt(ov['normalized'])}, cross-faithfulness {fmt(cf['value'])}",
                          xaxis_title="edges in circuit", yaxis_title="faithfulness", xaxis_type="log")
        return fig


# --- the study ------------------------------------------------------------------------------

def _check_inputs(model, clean: Examples, noisy: Examples, n_examples: int | None, seed, attribution: str,
                  ig_steps, target_faithfulness, positions: str, max_position_edges, n_blocks, floor_draws,
                  check_examples, check_edges, check_top, chunk_size) -> int:
    """Refuse bad input before any forward pass; return the number of examples per group."""
    for what, ex in (("clean", clean), ("noisy", noisy)):
        check_group(model, ex, what)
    if clean.tokens.shape[1] != noisy.tokens.shape[1] or not torch.equal(clean.answer_pos, noisy.answer_pos):
        raise AnalysisError(f"clean and noisy examples differ in layout: {tuple(clean.tokens.shape[1:])} "
                            f"positions, answer_pos {clean.answer_pos.tolist()} vs "
                            f"{tuple(noisy.tokens.shape[1:])}, {noisy.answer_pos.tolist()}")
    if len(clean.answer_pos) == 0 or int(clean.answer_token_pos[0]) < 1:
        raise AnalysisError(f"answer_pos={clean.answer_pos.tolist()} leaves no prompt to corrupt")
    _require_int(seed, "seed", 0)
    for value, name, low in ((ig_steps, "ig_steps", 1), (n_blocks, "n_blocks", 1), (floor_draws, "floor_draws", 1),
                             (check_examples, "check_examples", 2), (check_edges, "check_edges", 1),
                             (check_top, "check_top", 0), (max_position_edges, "max_position_edges", 1),
                             (chunk_size, "chunk_size", 1)):
        _require_int(value, name, low)
    if attribution not in ("auto", *METHODS):
        raise AnalysisError(f"attribution={attribution!r} is invalid: choose 'auto', 'eap' or 'eap-ig'")
    if positions not in POSITION_MODES:
        raise AnalysisError(f"positions={positions!r} is invalid: choose one of {POSITION_MODES}")
    if not isinstance(target_faithfulness, (int, float)) or not 0 < target_faithfulness < 1:
        raise AnalysisError(f"target_faithfulness={target_faithfulness!r} is invalid: it must lie in (0, 1) "
                            "(all edges give exactly 1, up to rounding)")
    n = min(len(clean), len(noisy)) if n_examples is None else n_examples
    _require_int(n, "n_examples", 4)
    for what, ex in (("clean", clean), ("noisy", noisy)):
        if len(ex) < n:
            raise AnalysisError(f"{what} has {len(ex)} examples, fewer than n_examples={n}")
    return int(n)


def _require_int(value, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise AnalysisError(f"{name}={value!r} is invalid: it must be an integer >= {low}"
                            + (" (two halves of at least 2 examples each)" if name == "n_examples" else ""))


def circuit_study(model, clean: Examples, noisy: Examples, *, seed: int, attribution: str = "auto",
                  ig_steps: int = 5, target_faithfulness: float = 0.8, n_examples: int | None = None,
                  positions: str = "auto", max_position_edges: int = 2000, n_blocks: int = 20,
                  floor_draws: int = 200, check_examples: int = 32, check_edges: int = 300,
                  check_top: int = 100, chunk_size: int = 512) -> CircuitStudyResult:
    """Claim 7 on one model: circuits for ``clean`` and ``noisy`` examples, their normalized
    overlap (7a) and the clean circuit's cross-faithfulness on the noisy examples (7b).

    ``n_examples`` per group (default: the smaller group's size; the clean halves get half
    each); ``attribution``: ``eap``, ``eap-ig`` or ``auto`` (whichever correlates better with
    exact single-edge patching on ``check_examples`` examples per group, over all edges when
    at most ``check_edges``, else a seeded sample of ``check_edges`` plus the ``check_top``
    best of each method); ``positions``: ``per_position``, ``summed`` or ``auto`` (per position
    when that makes at most ``max_position_edges`` edges); ``n_blocks`` blocks of examples per
    clean half and for the noisy group carry the attribution sums the bootstrap resamples;
    ``floor_draws`` pairs of random connected circuits make the floor. Randomness comes from
    ``seed`` only.

    >>> from memlens.models import ModelConfig, build_model
    >>> from memlens.tasks import make_task
    >>> task = make_task("fda", preset="tiny")
    >>> net = build_model(ModelConfig(n_layers=1, d_model=16, n_heads=2), task, seed=0)
    >>> data = task.generate(seed=0)
    >>> res = circuit_study(net, data.test[:8], data.test[8:16], seed=0, ig_steps=2, n_blocks=2,
    ...                     floor_draws=5, check_examples=2, check_edges=10, check_top=2)
    >>> s = res.summary()
    >>> s["graph"]["position_mode"], s["circuits"]["clean"]["faithfulness"] >= 0.8
    ('per_position', True)
    >>> s["overlap"]["normalized"] == overlap_statistic(s) or s["overlap"]["normalized"] != s["overlap"]["normalized"]
    True
    """
    n = _check_inputs(model, clean, noisy, n_examples, seed, attribution, ig_steps, target_faithfulness,
                      positions, max_position_edges, n_blocks, floor_draws, check_examples, check_edges,
                      check_top, chunk_size)
    index = EdgeIndex.of(Graph.of(model), clean.tokens.shape[1], positions, max_position_edges)
    pool = _pool(clean, noisy, n, seed)
    rows = pool.rows
    per_row = _attribution(model, pool, index, ig_steps, chunk_size)
    for group in CIRCUITS:
        gap = per_row["clean"][rows[group]].mean() - per_row["corrupt"][rows[group]].mean()
        if abs(gap) < 1e-6:
            raise AnalysisError(f"the metric is the same on clean and corrupted {group} examples "
                                f"(difference {gap:.2e}): there is nothing for a circuit to recover")
    runner = _Runner(model, pool, index, chunk_size)
    n_check = min(check_examples, len(rows["clean_a"]))
    check_rows = {"clean": rows["clean_a"][:n_check], "noisy": rows["noisy"][:n_check]}
    correlation = _correlations(runner, per_row, check_rows, check_edges, check_top,
                                np.random.default_rng([seed, 1]))
    method = _choose(attribution, correlation)
    blocks, block_sizes = _blocks(per_row[method], rows, n_blocks)
    writer, reader = index.edge_nodes()
    summary = {
        "schema": SCHEMA, "seed": seed, "target_faithfulness": target_faithfulness,
        "n_examples": n,
        "graph": {"position_mode": "per_position" if index.per_position else "summed",
                  "n_positions": index.n_pos, "n_edges": index.n_edges, "nodes": index.node_names(),
                  "root": index.logits_node, "edge_writer": writer.tolist(), "edge_reader": reader.tolist()},
        "method": method, "correlation": correlation,
        "attribution": {"method": method, "ig_steps": ig_steps if method == "eap-ig" else 1,
                        "blocks": blocks, "block_sizes": block_sizes},
    }
    scores = circuit_scores(summary["attribution"])
    orders = {name: growth_order(scores[name], writer, reader, index.logits_node) for name in CIRCUITS}
    metric_at: dict[tuple[str, int], np.ndarray] = {}

    # A circuit without an edge from the embedding carries only corrupted values: it is the
    # corrupted run exactly (faithfulness 0), so it is not run.
    embed_rank = {name: int(np.argmax(writer[orders[name]] == 0)) for name in CIRCUITS}

    def faithfulness(ask: dict[str, int]) -> dict[str, float]:
        run = {name: k for name, k in ask.items() if k > embed_rank[name]}
        results = runner.run([(rows[name], runner.mask(orders[name][:k])) for name, k in run.items()])
        out = {}
        for name, k in ask.items():
            clean_m, corrupt_m = per_row["clean"][rows[name]], per_row["corrupt"][rows[name]]
            metric_at[name, k] = results.pop(0) if name in run else corrupt_m
            out[name] = float((metric_at[name, k].mean() - corrupt_m.mean()) / (clean_m.mean() - corrupt_m.mean()))
        return out

    found = smallest_faithful_sizes(faithfulness, list(CIRCUITS), index.n_edges, target_faithfulness)
    for name in CIRCUITS:
        found[name]["n_examples"] = len(rows[name])
    summary["circuits"] = found
    noisy_rows = rows["noisy"]
    (by_clean,) = runner.run([(noisy_rows, runner.mask(orders["clean"][:found["clean"]["size"]]))])
    summary["noisy_metric"] = {
        "clean": per_row["clean"][noisy_rows].tolist(), "corrupt": per_row["corrupt"][noisy_rows].tolist(),
        "clean_circuit": by_clean.tolist(), "noisy_circuit": metric_at["noisy", found["noisy"]["size"]].tolist()}
    summary["metric"] = {group: {"clean": float(per_row["clean"][rows[group]].mean()),
                                 "corrupt": float(per_row["corrupt"][rows[group]].mean())}
                         for group in ("clean", "noisy")}
    rng = np.random.default_rng([seed, 2])
    draws = [iou(random_circuit(writer, reader, index.logits_node, found["clean"]["size"], rng),
                 random_circuit(writer, reader, index.logits_node, found["noisy"]["size"], rng))
             for _ in range(floor_draws)]
    summary["overlap"] = {"floor": float(np.mean(draws)), "floor_draws": floor_draws}
    summary["overlap"].update(overlap_parts(summary))
    summary["normalized_overlap"] = summary["overlap"]["normalized"]  # 7a, where the scorecard looks
    noisy_gap = summary["metric"]["noisy"]["clean"] - summary["metric"]["noisy"]["corrupt"]
    summary["cross_faithfulness"] = {
        "value": cross_faithfulness_statistic(summary),
        "clean_circuit_on_noisy": float(np.mean(by_clean) - summary["metric"]["noisy"]["corrupt"]) / noisy_gap,
        "noisy_circuit_on_noisy": found["noisy"]["faithfulness"]}
    frame = _frame(index, per_row, rows, scores, orders, found)
    summary["top_edges"] = {name: frame[frame.circuit == name].sort_values("score", key=abs, ascending=False)
                            .head(10)[["writer", "reader", "pos", "score"]].to_dict(orient="records")
                            for name in ("clean", "noisy")}
    return CircuitStudyResult(summary, frame)


def _frame(index: EdgeIndex, per_row: dict[str, np.ndarray], rows: dict[str, np.ndarray],
           scores: dict[str, np.ndarray], orders: dict[str, np.ndarray], found: dict) -> pd.DataFrame:
    """One row per edge and circuit: the chosen method's score (what the circuit was grown
    from), both methods' mean scores, the edge's joining rank and whether it is in."""
    labels = index.labels()
    parts = []
    for name in CIRCUITS:
        rank = np.empty(index.n_edges, dtype=int)
        rank[orders[name]] = np.arange(1, index.n_edges + 1)
        parts.append(labels.assign(circuit=name, score=scores[name],
                                   eap=per_row["eap"][rows[name]].mean(0),
                                   eap_ig=per_row["eap-ig"][rows[name]].mean(0),
                                   rank=rank, in_circuit=rank <= found[name]["size"]))
    return pd.concat(parts, ignore_index=True)
