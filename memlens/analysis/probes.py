"""Linear probes for intermediate results at every residual point x position, fitted together.

A probe is multinomial logistic regression on standardized activations. All probes, for every
(point, position) pair and every target, are fitted in one batched L-BFGS problem: the weights
form one tensor ``(probes, d_model, classes of all targets)`` and each target has its own softmax.
The objective per probe matches scikit-learn's ``LogisticRegression(C=1)``: summed cross-entropy
plus ``0.5 * ||W||^2``; the sum over probes is separable, so the joint optimum is each probe's own.

Controls beside each accuracy: the majority-class baseline and a probe fitted on shuffled labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from memlens.analysis.common import (
    AnalysisError, Result, cached_activations, check_examples, check_positions, model_device,
)
from memlens.tasks.base import Examples

MAX_DIRECT_CLASSES = 100


@dataclass(frozen=True)
class ProbeTarget:
    """One probed quantity: an intermediate, optionally one of its columns, optionally one decimal
    digit of it (numbers with more than 100 values are probed digit by digit)."""

    variable: str
    column: int | None
    digit: int | None
    n_classes: int

    @property
    def label(self) -> str:
        text = self.variable + (f"[{self.column}]" if self.column is not None else "")
        return text + (f".digit[{self.digit}]" if self.digit is not None else "")

    def values(self, examples: Examples) -> Tensor:
        """This target's class labels for ``examples``."""
        values = examples.intermediates[self.variable].long()
        if self.column is not None:
            values = values[:, self.column]
        if self.digit is not None:
            values = values // 10**self.digit % 10
        return values


def probe_variables(examples: Examples) -> list[str]:
    return sorted(examples.intermediates)


def probe_targets(examples: Examples, variable: str) -> list[ProbeTarget]:
    """The targets of one intermediate: one per column; large numbers split into decimal digits.

    >>> from memlens.tasks import make_task
    >>> ex = make_task("fda", preset="tiny").generate(0).train
    >>> [t.label for t in probe_targets(ex, "carry")]
    ['carry[0]', 'carry[1]', 'carry[2]']
    """
    if variable not in examples.intermediates:
        raise AnalysisError(f"unknown intermediate {variable!r}; valid names: "
                            f"{probe_variables(examples)}")
    values = examples.intermediates[variable]
    columns = [None] if values.ndim == 1 else list(range(values.shape[1]))
    targets = []
    for column in columns:
        col = values if column is None else values[:, column]
        if int(col.min()) < 0:
            continue  # e.g. relation_2 of atomic facts: not a quantity to probe
        top = int(col.max()) + 1
        if top > MAX_DIRECT_CLASSES and not variable.endswith("_entity"):
            for d in range(len(str(top - 1))):
                targets.append(ProbeTarget(variable, column, d, 10))
        else:
            targets.append(ProbeTarget(variable, column, None, top))
    return targets


def _standardize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return (x - mean) / std


def fit_softmax_probes(x: Tensor, labels: Tensor, n_classes: list[int], l2: float = 1.0,
                       max_iter: int = 200) -> tuple[Tensor, Tensor]:
    """Fit ``K`` probes x ``T`` targets of multinomial logistic regression at once.

    ``x`` is ``(n, K, d)`` standardized features, ``labels`` is ``(n, T)``. Returns weights
    ``(K, d, C)`` and biases ``(K, C)`` with ``C = sum(n_classes)``; target ``t`` owns the class
    block ``offsets[t]:offsets[t+1]``. Minimizes, per probe, summed cross-entropy over targets plus
    ``0.5 * l2 * ||W||^2`` (scikit-learn's objective with ``C = 1 / l2``) by L-BFGS.
    """
    n, k, d = x.shape
    xk = x.transpose(0, 1).contiguous()  # (K, n, d): one batched matmul per evaluation
    offsets = np.concatenate([[0], np.cumsum(n_classes)]).tolist()
    label_index = [labels[:, t].view(1, n, 1).expand(k, n, 1) for t in range(len(n_classes))]
    weight = torch.zeros(k, d, offsets[-1], device=x.device, requires_grad=True)
    bias = torch.zeros(k, 1, offsets[-1], device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-5, tolerance_change=1e-7,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = torch.baddbmm(bias, xk, weight)  # (K, n, C)
        loss = 0.5 * l2 * weight.pow(2).sum()
        for t in range(len(n_classes)):
            logp = logits[..., offsets[t]:offsets[t + 1]].log_softmax(-1)
            loss = loss - logp.gather(-1, label_index[t]).sum()
        loss = loss / n  # keeps line-search numbers moderate; the optimum is unchanged
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()[:, 0]


def predict_probes(x: Tensor, weight: Tensor, bias: Tensor, n_classes: list[int]) -> Tensor:
    """Predicted class per example, probe and target: ``(n, K, T)``."""
    logits = torch.baddbmm(bias[:, None], x.transpose(0, 1), weight).transpose(0, 1)
    offsets = np.concatenate([[0], np.cumsum(n_classes)])
    return torch.stack([logits[..., offsets[t]:offsets[t + 1]].argmax(-1)
                        for t in range(len(n_classes))], dim=-1)


@dataclass
class ProbeResult(Result):
    """Accuracy per target, residual point, position and evaluation group, with controls."""

    frame: pd.DataFrame
    site_limits: dict[str, int] = field(default_factory=dict)
    name = "probes"

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def best(self, select_group: str = "clean_heldout") -> pd.DataFrame:
        """Per target, the (point, position) with the best accuracy on ``select_group``, and the
        accuracies of every group at that probe. Sites after ``site_limits[target]`` are not
        eligible: there the teacher-forced answer tokens already show the target."""
        f = self.frame
        groups = sorted(f["group"].unique())
        if select_group not in groups:
            raise AnalysisError(f"select_group {select_group!r} is not an evaluated group: "
                                f"the probes were evaluated on {groups}")
        rows = []
        for target, part in f.groupby("target", sort=False):
            sel = part[part["group"] == select_group]
            if target in self.site_limits:
                sel = sel[sel["position"] <= self.site_limits[target]]
            if sel.empty:  # every site of this target lies past its limit
                continue
            top = sel.loc[sel["accuracy"].idxmax()]
            at = part[(part["point"] == top["point"]) & (part["position"] == top["position"])]
            row = {"target": target, "variable": top["variable"], "point": top["point"],
                   "position": int(top["position"])}
            for _, r in at.iterrows():
                row[f"{r['group']}_acc"] = r["accuracy"]
                row[f"{r['group']}_majority"] = r["majority"]
                row[f"{r['group']}_shuffled"] = r["shuffled"]
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        return {"best": self.best().to_dict(orient="records"), "site_limits": self.site_limits}

    def figure(self, target: str | None = None, group: str = "clean_heldout"):
        """Heatmap of probe accuracy, residual point x position, for one target."""
        import plotly.express as px

        target = target or self.frame["target"].iloc[0]
        part = self.frame[(self.frame["target"] == target) & (self.frame["group"] == group)]
        grid = part.pivot(index="point", columns="position", values="accuracy")
        grid = grid.loc[list(dict.fromkeys(part["point"]))]
        fig = px.imshow(grid, zmin=0, zmax=1, color_continuous_scale="Viridis", aspect="auto",
                        labels={"color": "accuracy"},
                        title=f"Probe accuracy for {target} on {group}")
        return fig


def probe_points(n_layers: int) -> list[tuple[str, str]]:
    """Residual points probed: the input of every layer and the final residual."""
    points = [(f"L{layer}.pre", f"blocks.{layer}.hook_resid_pre") for layer in range(n_layers)]
    return points + [(f"L{n_layers - 1}.post", f"blocks.{n_layers - 1}.hook_resid_post")]


def fit_probes(model, fit: Examples, evaluate: dict[str, Examples], variables: list[str] | str,
               *, positions: list[int] | None = None, l2: float = 1.0, max_iter: int = 100,
               controls: bool = True, seed: int = 0, chunk_size: int = 1024,
               site_limits: dict[str, int] | None = None) -> ProbeResult:
    """Fit probes for ``variables`` on ``fit`` examples; score them on every ``evaluate`` group.

    Noisy examples keep intermediates computed from their true inputs, so their probe accuracy
    says whether the model still computes the intermediate where it memorized the label. For THR,
    atomic facts are left out (their "bridge" is the answer). ``site_limits`` maps a target label
    to the last position eligible as its best site (``ProbeResult.best``).

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> s = task.generate(seed=0).splits
    >>> res = fit_probes(model, s["train_clean"][:300], {"noisy": s["train_noisy"]}, "carry",
    ...                  positions=[6], max_iter=20)
    >>> sorted(res.to_frame()["group"].unique())
    ['noisy']
    """
    variables = [variables] if isinstance(variables, str) else list(variables)
    check_examples(model, fit, "fit examples")
    for name, ex in evaluate.items():
        check_examples(model, ex, f"group {name!r}")
    for v in variables:
        if v not in fit.intermediates:
            raise AnalysisError(f"unknown intermediate {v!r}; valid names: {probe_variables(fit)}")
    positions = check_positions(fit.tokens.shape[1], positions)

    def two_hop(ex: Examples) -> Examples:
        return ex[ex.intermediates["n_hops"] == 2] if "n_hops" in ex.intermediates else ex

    fit = two_hop(fit)
    evaluate = {k: two_hop(v) for k, v in evaluate.items()}
    for name, ex in {"fit": fit, **evaluate}.items():
        if len(ex) == 0:
            raise AnalysisError(f"group {name!r} has no examples to probe")
    points = probe_points(model.cfg.n_layers)
    hooks = [h for _, h in points]

    def features(ex: Examples) -> Tensor:
        acts = cached_activations(model, ex.tokens, hooks, positions, chunk_size)
        return torch.stack([acts[h] for h in hooks], 1).flatten(1, 2).float()  # (n, P*S, d)

    # Probes fit where the model runs: on a GPU the batched L-BFGS is the bulk of the work.
    device = model_device(model)
    x_fit = features(fit).to(device)
    mean, std = x_fit.mean(0), x_fit.std(0).clamp(min=1e-6)
    x_fit = _standardize(x_fit, mean, std)
    targets = [t for v in variables for t in probe_targets(fit, v)]
    n_classes = [t.n_classes for t in targets]
    y_fit = torch.stack([t.values(fit) for t in targets], 1).to(device)
    weight, bias = fit_softmax_probes(x_fit, y_fit, n_classes, l2, max_iter)
    if controls:
        gen = torch.Generator().manual_seed(seed)
        y_shuffled = y_fit[torch.randperm(len(y_fit), generator=gen).to(device)]
        w_shuf, b_shuf = fit_softmax_probes(x_fit, y_shuffled, n_classes, l2, max_iter)
    majority = [int(torch.bincount(y_fit[:, i], minlength=c).argmax()) for i, c in enumerate(n_classes)]

    labels = [(p, pos) for p, _ in points for pos in positions]
    rows = []
    for group, ex in evaluate.items():
        x = _standardize(features(ex).to(device), mean, std)
        y = torch.stack([t.values(ex) for t in targets], 1).to(device)
        hit = (predict_probes(x, weight, bias, n_classes) == y[:, None]).float().mean(0).cpu()  # (K, T)
        hit_shuf = ((predict_probes(x, w_shuf, b_shuf, n_classes) == y[:, None]).float().mean(0).cpu()
                    if controls else torch.full_like(hit, float("nan")))
        y = y.cpu()
        for ti, t in enumerate(targets):
            maj = float((y[:, ti] == majority[ti]).float().mean())
            for k, (point, pos) in enumerate(labels):
                rows.append({"target": t.label, "variable": t.variable, "point": point,
                             "position": pos, "group": group, "n": len(ex),
                             "accuracy": float(hit[k, ti]), "majority": maj,
                             "shuffled": float(hit_shuf[k, ti])})
    return ProbeResult(frame=pd.DataFrame(rows), site_limits=dict(site_limits or {}))
