"""Arithmetic heuristics of FDA neurons, and outlier activations on noisy examples.

After Nikankin et al. (2024, "Arithmetic without algorithms"): a late MLP neuron in an
arithmetic model often fires on a simple pattern of the inputs, e.g. an operand or the result in
a range, the result modulo n, a digit at a column, or a carry. For every neuron of a
:class:`~memlens.analysis.neurons.NeuronTable` and every candidate pattern (a *feature*: an
integer function of the example's inputs, with few values), the neuron's activation is
predicted by the mean activation of clean examples with the same feature value. The goodness of
fit is the held-out R^2 of that lookup (fit on one half of the clean examples, scored on the
other, both ways, averaged), so that features with many values gain nothing from overfitting.
A neuron's heuristic is its best feature; it counts as a heuristic neuron when that R^2 reaches
``threshold`` (0.5 by default: the pattern explains most of its variance).

Outlier scoring: for a noisy example, the same lookup (fit on all clean examples) predicts what
the neuron would do on that input; the deviation of the actual activation, divided by the
neuron's residual standard deviation on clean examples, is its z-score. Inputs of noisy examples
are ordinary inputs (only the label is noisy), so a large |z| is a shift that memorization adds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from memlens.analysis.common import AnalysisError, Result
from memlens.analysis.neurons import NeuronTable
from memlens.tasks.base import Examples

MIN_CLEAN = 200  # below this, group means of 10-100 groups are too noisy to call a pattern
RANGE_BINS = 20
MODULI = tuple(range(2, 11))


def range_width(values: Tensor) -> int:
    """Bin width for the range family: about ``RANGE_BINS`` bins, rounded up to 1, 2 or 5
    times a power of ten so that ranges read as round numbers.

    >>> range_width(torch.tensor([0, 19998]))
    1000
    """
    raw = (int(values.max()) + 1) / RANGE_BINS
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= raw:
                return step * scale
        scale *= 10


def fda_features(examples: Examples) -> dict[str, tuple[str, Int[Tensor, " n"]]]:
    """Candidate features of FDA examples: ``name -> (family, integer values)``.

    Families: ``range`` (an operand or the sum, in about ``RANGE_BINS`` bins of a round width), ``mod``
    (an operand or the sum modulo 2..10), ``digit`` (a digit of an operand or of the sum at a
    column), ``column_sum`` and ``carry`` (per column).

    >>> from memlens.tasks import make_task
    >>> feats = fda_features(make_task("fda", preset="tiny").generate(0).train[:10])
    >>> feats["sum mod 7"][0], feats["carry into column 1"][0]
    ('mod', 'carry')
    """
    inter = examples.intermediates
    needed = {"operand", "sum", "column_sum", "carry"}
    if not needed <= set(inter):
        raise AnalysisError(f"heuristic features need the FDA intermediates {sorted(needed)} (or "
                            f"THR's bridge_entity); these examples have {sorted(inter)}")
    operands, total = inter["operand"].long(), inter["sum"].long()
    n_digits = inter["column_sum"].shape[1]
    values = {f"operand {k}": operands[:, k] for k in range(operands.shape[1])}
    values["sum"] = total
    feats: dict[str, tuple[str, Tensor]] = {}
    for name, v in values.items():
        feats[f"{name} range"] = ("range", v // range_width(v))
        for m in MODULI:
            feats[f"{name} mod {m}"] = ("mod", v % m)
        for c in range(n_digits + (1 if name == "sum" else 0)):
            feats[f"{name} digit {c}"] = ("digit", (v // 10 ** c) % 10)
    for c in range(n_digits):
        feats[f"column sum {c}"] = ("column_sum", inter["column_sum"][:, c].long())
        feats[f"carry into column {c + 1}"] = ("carry", inter["carry"][:, c + 1].long())
    return feats


def thr_features(examples: Examples) -> dict[str, tuple[str, Int[Tensor, " n"]]]:
    """Candidate features of two-hop (THR) examples: which entity or relation fills each slot,
    and the bridge and answer entities (family ``entity`` or ``relation``)."""
    inter = examples.intermediates
    names = {"head entity": ("entity", "head_entity"), "relation 1": ("relation", "relation_1"),
             "relation 2": ("relation", "relation_2"), "bridge entity": ("entity", "bridge_entity"),
             "answer entity": ("entity", "answer_entity")}
    return {name: (family, inter[key].long().clamp(min=0)) for name, (family, key) in names.items()}


def task_features(examples: Examples) -> dict[str, tuple[str, Int[Tensor, " n"]]]:
    """The candidate features for the examples' task (FDA arithmetic heuristics, or THR slots)."""
    if "bridge_entity" in examples.intermediates:
        return thr_features(examples)
    return fda_features(examples)


def _group_means(values: Tensor, acts: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """Per feature value: mean activation (groups x K) and count (groups)."""
    onehot = torch.zeros(len(values), n_groups, dtype=acts.dtype)
    onehot[torch.arange(len(values)), values] = 1.0
    counts = onehot.sum(0)
    sums = onehot.T @ acts
    return sums / counts.clamp(min=1)[:, None], counts


def _lookup(values: Tensor, fit_values: Tensor, fit_acts: Tensor) -> Tensor:
    """Predicted activations for ``values``: the mean of ``fit_acts`` over fit examples with the
    same value, the overall mean where a value was never seen."""
    n_groups = int(max(values.max(), fit_values.max())) + 1
    means, counts = _group_means(fit_values, fit_acts, n_groups)
    means[counts == 0] = fit_acts.mean(0)
    return means[values]


def _heldout_r2(values: Tensor, acts: Tensor, halves: Tensor) -> Tensor:
    """Held-out R^2 (K,) of the lookup, fit on each half and scored on the other, averaged."""
    scores = []
    for fit, held in ((halves, ~halves), (~halves, halves)):
        pred = _lookup(values[held], values[fit], acts[fit])
        resid = ((acts[held] - pred) ** 2).sum(0)
        total = ((acts[held] - acts[held].mean(0)) ** 2).sum(0)
        scores.append(1 - resid / total.clamp(min=1e-12))
    return torch.stack(scores).mean(0)


@dataclass
class HeuristicResult(Result):
    """Per neuron: best feature, its family and held-out R^2; whether it is a heuristic neuron."""

    layers: list[int]
    positions: list[int]
    d_mlp: int
    best_feature: list[str]
    family: list[str]
    r2: Float[Tensor, " k"]
    threshold: float
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)  # neuron index -> [lo, hi)

    @property
    def is_heuristic(self) -> Tensor:
        return self.r2 >= self.threshold

    def index(self, layer: int, position: int, neuron: int) -> int:
        """Flat index of a neuron (tables are layer x position x neuron)."""
        return (self.layers.index(layer) * len(self.positions) + self.positions.index(position)) * self.d_mlp + neuron

    def to_frame(self) -> pd.DataFrame:
        k = len(self.r2)
        idx = np.arange(k)
        return pd.DataFrame({
            "layer": np.array(self.layers)[idx // (len(self.positions) * self.d_mlp)],
            "position": np.array(self.positions)[(idx // self.d_mlp) % len(self.positions)],
            "neuron": idx % self.d_mlp, "best_feature": self.best_feature, "family": self.family,
            "r2": self.r2.numpy(), "heuristic": self.is_heuristic.numpy(),
            "range": [self.ranges.get(i) for i in range(k)],
        })

    def counts(self) -> pd.DataFrame:
        """Heuristic neurons per layer and family (``none`` below the threshold)."""
        frame = self.to_frame()
        frame.loc[~frame["heuristic"], "family"] = "none"
        return frame.groupby(["layer", "family"]).size().unstack(fill_value=0)

    def summary(self) -> dict:
        return {"threshold": self.threshold, "n_neurons": len(self.r2),
                "n_heuristic": int(self.is_heuristic.sum()),
                "counts": {str(k): v for k, v in self.counts().to_dict(orient="index").items()}}

    def figure(self):
        import plotly.express as px

        counts = self.counts().reset_index().melt(id_vars="layer", var_name="family", value_name="neurons")
        fig = px.bar(counts, x="layer", y="neurons", color="family",
                     title=f"Heuristic neurons per layer (held-out R^2 >= {self.threshold})")
        return fig


def classify_neurons(table: NeuronTable, examples: Examples, *, threshold: float = 0.5,
                     seed: int = 0, features: dict | None = None) -> HeuristicResult:
    """The best heuristic of every neuron in ``table`` (computed on ``examples``), from its
    clean examples only.

    >>> from memlens.tasks import make_task
    >>> from memlens.analysis.neurons import NeuronTable
    >>> ex = make_task("fda", preset="tiny").generate(0).train
    >>> acts = (ex.intermediates["sum"] % 7 == 3).float()[:, None, None, None]  # a planted mod-7 neuron
    >>> table = NeuronTable(acts, [1], [9], ex.is_noisy)
    >>> classify_neurons(table, ex).best_feature
    ['sum mod 7']
    """
    if len(table.acts) != len(examples):
        raise AnalysisError(f"the table has {len(table.acts)} examples but {len(examples)} were given")
    clean = ~examples.is_noisy
    n_clean = int(clean.sum())
    if n_clean < MIN_CLEAN:
        raise AnalysisError(f"{n_clean} clean examples are too few to estimate neuron patterns: "
                            f"need at least {MIN_CLEAN}")
    feats = task_features(examples) if features is None else features
    acts = table.acts[clean].flatten(1).double()
    gen = torch.Generator().manual_seed(seed)
    halves = torch.zeros(n_clean, dtype=torch.bool)
    halves[torch.randperm(n_clean, generator=gen)[: n_clean // 2]] = True
    names = list(feats)
    r2 = torch.stack([_heldout_r2(feats[name][1][clean], acts, halves) for name in names])  # F x K
    flat = acts.var(0) < 1e-10  # a neuron that never varies on clean data explains nothing
    best = r2.argmax(0)
    best_r2 = r2.max(0).values.where(~flat, torch.zeros(()))
    best_names = [names[i] for i in best.tolist()]
    families = ["inactive" if f else feats[n][0] for n, f in zip(best_names, flat.tolist())]
    ranges = {}
    for k, (name, fam) in enumerate(zip(best_names, families)):
        if fam == "range" and best_r2[k] >= threshold:
            ranges[k] = _active_range(feats[name][1][clean], acts[:, k], name, examples)
    return HeuristicResult(layers=table.layers, positions=table.positions, d_mlp=table.acts.shape[-1],
                           best_feature=best_names, family=families, r2=best_r2.float(),
                           threshold=threshold, ranges=ranges)


def _active_range(bins: Tensor, acts: Tensor, name: str, examples: Examples) -> tuple[int, int]:
    """[lo, hi) of the value where the neuron's mean activation is above its midpoint."""
    means, counts = _group_means(bins, acts[:, None], int(bins.max()) + 1)
    means = means[:, 0]
    seen = counts > 0
    mid = (means[seen].max() + means[seen].min()) / 2
    active = ((means > mid) & seen).nonzero()[:, 0]
    base = name.removesuffix(" range")
    values = examples.intermediates["sum"] if base == "sum" else examples.intermediates["operand"][:, int(base.split()[1])]
    width = range_width(values)
    return int(active.min()) * width, (int(active.max()) + 1) * width


@dataclass
class OutlierResult(Result):
    """z-scores of noisy examples' activations against each neuron's clean pattern."""

    z: Float[Tensor, "n_noisy k"]
    heldout_clean_abs_z: Float[Tensor, " k"]
    heuristics: HeuristicResult
    z_threshold: float

    @property
    def neuron_score(self) -> Tensor:
        """Mean |z| over noisy examples, per neuron."""
        return self.z.abs().mean(0)

    @property
    def example_score(self) -> Tensor:
        """Mean |z| over neurons, per noisy example."""
        return self.z.abs().mean(1)

    @property
    def outliers(self) -> Tensor:
        """Neurons whose mean |z| on noisy examples reaches ``z_threshold`` and is at least twice
        their mean |z| on held-out clean examples (a noisy shift, not a poorly fit neuron)."""
        return (self.neuron_score >= self.z_threshold) & (self.neuron_score >= 2 * self.heldout_clean_abs_z)

    def to_frame(self) -> pd.DataFrame:
        frame = self.heuristics.to_frame()
        frame["noisy_abs_z"] = self.neuron_score.numpy()
        frame["clean_abs_z"] = self.heldout_clean_abs_z.numpy()
        frame["outlier"] = self.outliers.numpy()
        return frame

    def summary(self) -> dict:
        out = self.outliers
        return {"n_outliers": int(out.sum()),
                "n_outliers_heuristic": int((out & self.heuristics.is_heuristic).sum()),
                "share_heuristic": float((out & self.heuristics.is_heuristic).sum() / out.sum())
                if out.any() else None,
                "z_threshold": self.z_threshold}

    def figure(self):
        import plotly.express as px

        frame = self.to_frame()
        return px.scatter(frame, x="clean_abs_z", y="noisy_abs_z", color="heuristic",
                          hover_data=["layer", "position", "neuron", "best_feature"],
                          title="Neuron shifts on noisy examples against held-out clean ones")


def score_outliers(table: NeuronTable, examples: Examples, heuristics: HeuristicResult, *,
                   z_threshold: float = 1.0, features: dict | None = None) -> OutlierResult:
    """z-scores of every noisy example x neuron against the neuron's best clean lookup."""
    feats = task_features(examples) if features is None else features
    clean, noisy = ~examples.is_noisy, examples.is_noisy
    if not noisy.any():
        raise AnalysisError("no noisy examples to score")
    acts = table.acts.flatten(1).double()
    z = torch.empty(int(noisy.sum()), acts.shape[1], dtype=torch.float64)
    heldout = torch.empty(acts.shape[1], dtype=torch.float64)
    n_clean = int(clean.sum())
    half = torch.zeros(n_clean, dtype=torch.bool)
    half[: n_clean // 2] = True
    for name in set(heuristics.best_feature):
        cols = torch.tensor([k for k, f in enumerate(heuristics.best_feature) if f == name])
        values = feats[name][1]
        fit_acts, fit_values = acts[clean][:, cols], values[clean]
        resid = fit_acts - _lookup(fit_values, fit_values, fit_acts)
        std = resid.std(0).clamp(min=1e-6)
        z[:, cols] = (acts[noisy][:, cols] - _lookup(values[noisy], fit_values, fit_acts)) / std
        # The same score on clean examples the lookup did not see: what |z| is without noise.
        held = _lookup(fit_values[~half], fit_values[half], fit_acts[half])
        heldout[cols] = ((fit_acts[~half] - held) / std).abs().mean(0)
    return OutlierResult(z=z.float(), heldout_clean_abs_z=heldout.float(), heuristics=heuristics,
                         z_threshold=z_threshold)
