"""Heuristic neurons, and outlier activations on noisy examples (claim 6).

After Nikankin et al. (2025, "Arithmetic Without Algorithms"): a late MLP neuron in an arithmetic
model often fires on a simple pattern of the inputs (an operand or the result in a range, a
residue, a digit, a carry). For every neuron-position of a
:class:`~memlens.analysis.neurons.NeuronTable` and every candidate *feature* (an integer function of
the example with few values), the activation is predicted by the mean activation of clean
examples with the same feature value; the fit is the held-out R^2 of that lookup (fit on one half
of the clean examples, scored on the other, both ways, averaged), so features with many values
gain nothing from overfitting.

Candidates: the task's features (``TaskBase.neuron_features``), and **every answer token visible
at the neuron's position** (family ``answer_token``): a neuron that reads the teacher-forced
previous answer digit is explained by it, on noisy examples too, instead of looking like a
heuristic on clean data and an outlier on noisy data. A neuron-position is a **heuristic neuron**
when its best feature is in one of the task's heuristic families and R^2 >= ``threshold``.

Outliers: ``z = (activation - lookup prediction) / sd`` per noisy example, where ``sd`` is the
neuron-position's activation standard deviation on clean examples (the residual sd would make
well-fit neurons outliers by construction). The lookup is fit on one half of the clean examples
and the clean reference ``|z|`` measured on the other; noisy examples are split into a selection
half (which picks the outliers) and an evaluation half (on which they are reset, in
:mod:`memlens.analysis.neuron_patching`).
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from memlens.analysis.common import AnalysisError, Result
from memlens.analysis.neurons import NeuronTable
from memlens.tasks.base import Examples

MIN_CLEAN = 200  # below this, group means of 10-100 groups are too noisy to call a pattern
ANSWER_TOKEN = "answer_token"


@dataclass(frozen=True)
class Features:
    """Candidate features: ``name -> (family, values (n,))``, which families are heuristics,
    and at which position each answer-token feature becomes visible."""

    values: dict[str, tuple[str, Tensor]]
    heuristic_families: frozenset[str]
    visible_from: dict[str, int] = field(default_factory=dict)

    def at(self, position: int) -> list[str]:
        """Names of the features a neuron at ``position`` can depend on."""
        return [n for n in self.values if self.visible_from.get(n, -1) <= position]

    def subset(self, rows: Tensor) -> "Features":
        return Features({k: (f, v[rows]) for k, (f, v) in self.values.items()},
                        self.heuristic_families, self.visible_from)


def candidate_features(examples: Examples, features: dict | None = None,
                       heuristic_families: frozenset[str] | None = None) -> Features:
    """The task's neuron features plus the visible answer tokens.

    >>> from memlens.tasks import make_task
    >>> ex = make_task("fda", preset="tiny").generate(0).train[:10]
    >>> f = candidate_features(ex)
    >>> "answer token 0" in f.at(int(ex.answer_pos[0])), "answer token 0" in f.at(int(ex.answer_pos[1]))
    (False, True)
    """
    if features is None or heuristic_families is None:
        if not examples.origin:
            raise AnalysisError("these Examples carry no task origin: pass features= and "
                                "heuristic_families= explicitly")
        from memlens.tasks import task_for

        task = task_for(examples)
        features = task.neuron_features(examples) if features is None else features
        heuristic_families = task.heuristic_families if heuristic_families is None else heuristic_families
    # Answer tokens first: on clean examples a visible answer digit and the heuristic it equals
    # (e.g. the sum's units digit) fit identically, and the first of tied features wins; the
    # visible token is the explanation that needs no computation.
    values, visible = {}, {}
    for j, pos in enumerate(examples.answer_token_pos.tolist()):
        name = f"answer token {j}"
        values[name] = (ANSWER_TOKEN, examples.tokens[:, pos].long())
        visible[name] = pos
    values.update(features)
    if not values:
        raise AnalysisError("no candidate features for these examples")
    return Features(values, frozenset(heuristic_families), visible)


def _group_means(values: Tensor, acts: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """Per feature value: mean activation (groups x K) and count (groups)."""
    values = values.to(acts.device)
    sums = torch.zeros(n_groups, acts.shape[1], dtype=acts.dtype, device=acts.device).index_add_(0, values, acts)
    counts = torch.bincount(values, minlength=n_groups).to(acts.dtype)
    return sums / counts.clamp(min=1)[:, None], counts


def lookup(values: Tensor, fit_values: Tensor, fit_acts: Tensor) -> Tensor:
    """Predicted activations for ``values``: the mean of ``fit_acts`` over fit examples with the
    same value, the overall mean where a value was never seen."""
    n_groups = int(max(values.max(), fit_values.max())) + 1
    means, counts = _group_means(fit_values, fit_acts, n_groups)
    means[counts == 0] = fit_acts.mean(0)
    return means[values]


def _split_sums(values: Tensor, acts: Tensor, halves: Tensor, n_groups: int):
    """Per half of the examples: per-value sums of activations ``(n_groups, K)`` and counts.

    One scatter over all rows into ``2 * n_groups`` bins (value, half), so no half is copied.
    """
    group = values.to(acts.device) + (~halves).to(acts.device).long() * n_groups
    sums = torch.zeros(2 * n_groups, acts.shape[1], dtype=acts.dtype, device=acts.device)
    sums.index_add_(0, group, acts)
    counts = torch.bincount(group, minlength=2 * n_groups).to(acts.dtype)
    return [(sums[:n_groups], counts[:n_groups]), (sums[n_groups:], counts[n_groups:])]


def half_squares(acts: Tensor, halves: Tensor) -> Tensor:
    """``(2, K)`` sums of squared activations over each half (``halves`` true: the first)."""
    sq = acts * acts
    first = sq[halves.to(acts.device)].sum(0)
    return torch.stack([first, sq.sum(0) - first])


def _heldout_r2(values: Tensor, acts: Tensor, halves: Tensor, squares: Tensor | None = None) -> Tensor:
    """Held-out R^2 (K,) of the lookup, fit on each half and scored on the other, averaged.

    Computed from per-value sums only: on the held-out half, the squared residual against the
    fit half's value means ``m`` is ``sum_v (S2_v - 2 m_v S1_v + n_v m_v^2)``, and
    ``sum_v S2_v`` is the half's sum of squares whatever the feature (``squares``, from
    :func:`half_squares`), so only the per-value sums ``S1_v`` are scattered."""
    squares = half_squares(acts, halves) if squares is None else squares
    stats = _split_sums(values, acts, halves, int(values.max()) + 1)
    scores = []
    for fit, held in ((0, 1), (1, 0)):
        s1f, nf = stats[fit]
        s1h, nh = stats[held]
        overall = s1f.sum(0) / nf.sum().clamp(min=1)
        mean = torch.where(nf[:, None] > 0, s1f / nf.clamp(min=1)[:, None], overall)
        resid = squares[held] - (2 * mean * s1h - nh[:, None] * mean * mean).sum(0)
        total = squares[held] - s1h.sum(0) ** 2 / nh.sum().clamp(min=1)
        scores.append(1 - resid / total.clamp(min=1e-12))
    return torch.stack(scores).mean(0)


def _half(n: int, gen: torch.Generator) -> Tensor:
    """A seeded mask selecting half of ``n`` items."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[: n // 2]] = True
    return mask


@dataclass
class HeuristicResult(Result):
    """Per neuron-position: best feature, its family and held-out R^2; heuristic or not."""

    layers: list[int]
    positions: list[int]
    d_mlp: int
    best_feature: list[str]
    family: list[str]
    r2: Float[Tensor, " k"]
    threshold: float
    heuristic_families: frozenset[str] = frozenset()
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)  # neuron index -> [lo, hi)
    name = "heuristics"

    @property
    def is_heuristic(self) -> Tensor:
        fam = torch.tensor([f in self.heuristic_families for f in self.family], dtype=torch.bool)
        return fam & (self.r2 >= self.threshold)

    def coords(self, k: int) -> tuple[int, int, int]:
        """(layer, position, neuron) of flat index ``k`` (tables are layer x position x neuron)."""
        n_pos = len(self.positions)
        return self.layers[k // (n_pos * self.d_mlp)], self.positions[(k // self.d_mlp) % n_pos], k % self.d_mlp

    def index(self, layer: int, position: int, neuron: int) -> int:
        """Flat index of a neuron-position."""
        return (self.layers.index(layer) * len(self.positions) + self.positions.index(position)) * self.d_mlp + neuron

    def to_frame(self) -> pd.DataFrame:
        coords = [self.coords(k) for k in range(len(self.r2))]
        return pd.DataFrame({
            "layer": [c[0] for c in coords], "position": [c[1] for c in coords],
            "neuron": [c[2] for c in coords], "best_feature": self.best_feature,
            "family": self.family, "r2": self.r2.numpy(), "heuristic": self.is_heuristic.numpy(),
            "range": [self.ranges.get(i) for i in range(len(self.r2))],
        })

    def counts(self) -> pd.DataFrame:
        """Neuron-positions per layer and best-feature family (``none`` below the threshold)."""
        frame = self.to_frame()
        frame.loc[frame["r2"] < self.threshold, "family"] = "none"
        return frame.groupby(["layer", "family"]).size().unstack(fill_value=0)

    def summary(self) -> dict:
        return {"threshold": self.threshold, "n_neurons": len(self.r2),
                "n_heuristic": int(self.is_heuristic.sum()),
                "heuristic_families": sorted(self.heuristic_families),
                "counts": {str(k): v for k, v in self.counts().to_dict(orient="index").items()}}

    @staticmethod
    def render(data: dict):
        """Neuron-positions per layer by the family of their best feature."""
        import plotly.express as px

        frame = pd.DataFrame(data["frame"])
        threshold = data["summary"]["threshold"]
        frame.loc[frame["r2"] < threshold, "family"] = "none"
        counts = frame.groupby(["layer", "family"]).size().reset_index(name="neurons")
        return px.bar(counts, x="layer", y="neurons", color="family",
                      title=f"Neuron-positions by best feature (held-out R^2 >= {threshold})")


def classify_neurons(table: NeuronTable, examples: Examples, *, threshold: float = 0.5,
                     seed: int = 0, features: dict | None = None,
                     heuristic_families: frozenset[str] | None = None,
                     device: str | torch.device = "cpu") -> HeuristicResult:
    """The best feature of every neuron-position in ``table`` (computed on ``examples``), from
    clean examples only; ``features`` and ``heuristic_families`` default to the task's.
    ``device``: where the per-value sums are computed (the model's GPU, when there is one).

    >>> from memlens.tasks import make_task
    >>> from memlens.analysis.neurons import NeuronTable
    >>> ex = make_task("fda", preset="tiny").generate(0).train
    >>> acts = (ex.intermediates["sum"] % 7 == 3).float()[:, None, None, None]  # a planted mod-7 neuron
    >>> table = NeuronTable(acts, [0], [int(ex.answer_pos[0])], ex.is_noisy)
    >>> res = classify_neurons(table, ex)
    >>> res.best_feature, res.is_heuristic.tolist()
    (['sum mod 7'], [True])
    """
    if len(table.acts) != len(examples):
        raise AnalysisError(f"the table has {len(table.acts)} examples but {len(examples)} were given")
    clean = ~examples.is_noisy
    n_clean = int(clean.sum())
    if n_clean < MIN_CLEAN:
        raise AnalysisError(f"{n_clean} clean examples are too few to estimate neuron patterns: "
                            f"need at least {MIN_CLEAN}")
    feats = candidate_features(examples, features, heuristic_families).subset(clean)
    acts = table.acts[clean].to(device).double()  # (n, L, P, d)
    halves = _half(n_clean, torch.Generator().manual_seed(seed)).to(device)
    shape = acts.shape[1:]
    best_r2 = torch.zeros(shape, dtype=torch.float64)
    best_name = np.empty(shape, dtype=object)
    for pi, position in enumerate(table.positions):
        # Contiguous: with one layer, the slice is a strided view of ``acts``, over which
        # index_add_ ran about 6x slower (the neuron study's tables have one layer).
        block = acts[:, :, pi].flatten(1).contiguous()  # (n, L * d)
        squares = half_squares(block, halves)
        names = feats.at(position)
        r2 = torch.stack([_heldout_r2(feats.values[n][1], block, halves, squares) for n in names])
        r2 = r2.where(block.var(0) >= 1e-10, torch.zeros(()))  # a flat neuron explains nothing
        best_r2[:, pi] = r2.max(0).values.view(shape[0], shape[2]).cpu()
        best_name[:, pi] = np.array(names, dtype=object)[r2.argmax(0).cpu().numpy()].reshape(shape[0], shape[2])
    names = best_name.reshape(-1).tolist()
    r2 = best_r2.flatten().float()
    flat = (acts.flatten(1).var(0) < 1e-10).tolist()
    families = ["inactive" if f else feats.values[n][0] for n, f in zip(names, flat)]
    ranges = {}
    for k, (name, fam) in enumerate(zip(names, families)):
        if fam == "range" and r2[k] >= threshold and examples.origin:
            ranges[k] = _active_range(feats.values[name][1], acts.flatten(1)[:, k], name)
    return HeuristicResult(layers=table.layers, positions=table.positions, d_mlp=table.acts.shape[-1],
                           best_feature=names, family=families, r2=r2, threshold=threshold,
                           heuristic_families=feats.heuristic_families, ranges=ranges)


def _active_range(bins: Tensor, acts: Tensor, name: str) -> tuple[int, int]:
    """[lo, hi) of the binned value where the neuron's mean activation is above its midpoint, in
    the value's units when the feature is named ``"... (width W)"`` (bins of width W), else in
    bins."""
    means, counts = _group_means(bins, acts[:, None], int(bins.max()) + 1)
    means = means[:, 0]
    seen = counts > 0
    mid = (means[seen].max() + means[seen].min()) / 2
    active = ((means > mid) & seen).nonzero()[:, 0]
    width = re.search(r"\(width (\d+)\)$", name)
    width = int(width.group(1)) if width else 1
    return int(active.min()) * width, (int(active.max()) + 1) * width


@dataclass
class OutlierResult(Result):
    """z-scores of noisy examples' activations against each neuron-position's clean pattern."""

    z: Float[Tensor, "n_noisy k"]
    heldout_clean_abs_z: Float[Tensor, " k"]
    variance: Float[Tensor, " k"]
    selection: Tensor  # (n_noisy,) bool: the noisy half that picks the outliers
    clean_fit: Tensor  # (n_clean,) bool: the clean half the lookups are fit on
    heuristics: HeuristicResult
    z_threshold: float
    ratio: float
    name = "outliers"

    @property
    def neuron_score(self) -> Tensor:
        """Mean |z| over the noisy selection half, per neuron-position."""
        return self.z[self.selection].abs().mean(0)

    @property
    def outliers(self) -> Tensor:
        """Neuron-positions whose mean |z| on the noisy selection half reaches ``z_threshold``
        and ``ratio`` times their mean |z| on held-out clean examples."""
        score = self.neuron_score
        return (score >= self.z_threshold) & (score >= self.ratio * self.heldout_clean_abs_z)

    def variance_deciles(self) -> Tensor:
        """Decile (0-9) of each neuron-position's clean activation variance."""
        ranks = self.variance.argsort().argsort()
        return (ranks * 10 // len(ranks)).clamp(max=9)

    def enrichment(self, permutations: int = 1000, seed: int = 0) -> dict:
        """Heuristic share among outliers against the share among all neuron-positions matched
        to the outliers' variance deciles; permutation p-value (outlier labels shuffled within
        deciles)."""
        out, heur, dec = self.outliers, self.heuristics.is_heuristic, self.variance_deciles()
        if not out.any():
            return {"share": None, "matched_share": None, "enrichment": None, "p_value": None}
        share, matched = matched_shares(out, heur, dec)
        # Shuffle the outlier labels within deciles, all permutations at once: sorting by
        # (decile, random key) lists each decile's items in random order, in the same decile
        # blocks as sorting by decile alone.
        gen = torch.Generator().manual_seed(seed)
        base = dec.argsort(stable=True)
        keys = dec.double() * 2 + torch.rand(permutations, len(dec), generator=gen, dtype=torch.float64)
        shuffled = torch.empty(permutations, len(dec), dtype=torch.bool)
        shuffled[:, base] = out[keys.argsort(dim=1)]
        perm_share = (shuffled & heur).sum(1) / shuffled.sum(1)
        hits = int((perm_share >= share).sum())
        return {"share": share, "matched_share": matched, "enrichment": share - matched,
                "p_value": (1 + hits) / (1 + permutations)}

    def to_frame(self) -> pd.DataFrame:
        frame = self.heuristics.to_frame()
        frame["noisy_abs_z"] = self.neuron_score.numpy()
        frame["clean_abs_z"] = self.heldout_clean_abs_z.numpy()
        frame["outlier"] = self.outliers.numpy()
        return frame

    def summary(self) -> dict:
        out = self.outliers
        heur = out & self.heuristics.is_heuristic
        return {"n_outliers": int(out.sum()), "n_outliers_heuristic": int(heur.sum()),
                "share_heuristic": float(heur.sum() / out.sum()) if out.any() else None,
                "z_threshold": self.z_threshold, "ratio": self.ratio,
                "enrichment": self.enrichment()}

    @staticmethod
    def render(data: dict):
        from memlens.analysis.neuron_study import NeuronStudyResult

        return NeuronStudyResult.render(data)


def matched_shares(outlier: Tensor, heuristic: Tensor, decile: Tensor) -> tuple[float, float]:
    """Heuristic share among outliers, and among all items weighted to the outliers' decile
    distribution (variance-matched). Used by the analysis and by the scorecard's bootstrap."""
    share = float(heuristic[outlier].float().mean())
    matched = 0.0
    n_out = int(outlier.sum())
    for d in decile[outlier].unique().tolist():
        in_d = decile == d
        matched += int((outlier & in_d).sum()) / n_out * float(heuristic[in_d].float().mean())
    return share, matched


def score_outliers(table: NeuronTable, examples: Examples, heuristics: HeuristicResult, *,
                   z_threshold: float = 0.5, ratio: float = 2.0, seed: int = 0,
                   features: dict | None = None, device: str | torch.device = "cpu") -> OutlierResult:
    """z-scores of every noisy example x neuron-position against its best clean lookup
    (computed on ``device``)."""
    feats = candidate_features(examples, features, heuristics.heuristic_families)
    clean, noisy = ~examples.is_noisy, examples.is_noisy
    if not noisy.any():
        raise AnalysisError("no noisy examples to score")
    if int(noisy.sum()) < 2:
        raise AnalysisError("outliers need at least 2 noisy examples (a selection and an evaluation half)")
    gen = torch.Generator().manual_seed(seed + 1)
    clean_fit = _half(int(clean.sum()), gen)
    selection = _half(int(noisy.sum()), gen)
    acts = table.acts.flatten(1).to(device).double()
    clean, noisy = clean.to(acts.device), noisy.to(acts.device)
    fit_rows, held_rows = clean_fit.to(acts.device), ~clean_fit.to(acts.device)
    clean_acts, noisy_acts = acts[clean], acts[noisy]
    fit_acts, held_acts = clean_acts[fit_rows], clean_acts[held_rows]  # once, not per feature
    sd = clean_acts.std(0).clamp(min=1e-6)
    z = torch.empty_like(noisy_acts)
    heldout = torch.empty(acts.shape[1], dtype=torch.float64, device=acts.device)
    for name in set(heuristics.best_feature):
        cols = torch.tensor([k for k, f in enumerate(heuristics.best_feature) if f == name], device=acts.device)
        values = feats.values[name][1].to(acts.device)
        fit_v, fit_a = values[clean][fit_rows], fit_acts[:, cols]
        z[:, cols] = (noisy_acts[:, cols] - lookup(values[noisy], fit_v, fit_a)) / sd[cols]
        held = lookup(values[clean][held_rows], fit_v, fit_a)
        heldout[cols] = ((held_acts[:, cols] - held) / sd[cols]).abs().mean(0)
    return OutlierResult(z=z.float().cpu(), heldout_clean_abs_z=heldout.float().cpu(),
                         variance=clean_acts.var(0).float().cpu(), selection=selection, clean_fit=clean_fit,
                         heuristics=heuristics, z_threshold=z_threshold, ratio=ratio)
