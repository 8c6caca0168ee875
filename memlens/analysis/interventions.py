"""Interventions that remove an intermediate's information, and what they do to recall.

* **Mean ablation**: the activation at a hook point and positions is replaced by its mean over
  reference (clean) examples.
* **INLP** (iterative nullspace projection, Ravfogel et al. 2020): fit linear probes for the
  intermediate, project their weight directions out of the residual stream, refit on the projected
  activations, repeat; the union of directions is removed at the chosen positions.
* **Random control**: a random subspace of the same rank removed at the same place.

Each intervention is applied with a hook while the memorization metrics are measured (noisy
recall, clean training accuracy, test accuracy), before and after, so the effect on memorized
labels is compared with the effect on reasoning and with the control (claim 4 of PAPER.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from memlens.analysis.common import AnalysisError, Result, cached_activations, check_examples
from memlens.analysis.probes import fit_softmax_probes, predict_probes, probe_targets
from memlens.tasks.base import Examples
from memlens.training.metrics import evaluate


def _resid_hook(layer: int, point: str) -> str:
    if point not in ("pre", "mid", "post"):
        raise AnalysisError(f"point={point!r} is invalid: expected 'pre', 'mid' or 'post'")
    return f"blocks.{layer}.hook_resid_{point}"


def inlp_basis(model, fit: Examples, variable: str, *, layer: int, point: str = "pre",
               position: int, column: int | None = None, iterations: int = 3,
               rank_per_iteration: int = 8, max_iter: int = 100) -> tuple[Tensor, list[float]]:
    """Orthonormal basis ``(d_model, rank)`` of the directions INLP removes, and the probe
    accuracy before each iteration and after the last (it should fall towards the majority
    baseline). Each iteration removes the ``rank_per_iteration`` strongest directions of the
    probe (top singular vectors of its weights): with many classes (200 THR entities) the full
    row space would be the whole residual stream. ``column`` restricts a multi-column
    intermediate to one column; by default every column is probed."""
    check_examples(model, fit, "fit examples")
    if not 0 <= layer < model.cfg.n_layers:
        raise AnalysisError(f"layer={layer} out of range: the model has layers 0..{model.cfg.n_layers - 1}")
    if not 0 <= position < fit.tokens.shape[1]:
        raise AnalysisError(f"position={position} out of range 0..{fit.tokens.shape[1] - 1}")
    hook = _resid_hook(layer, point)
    x = cached_activations(model, fit.tokens, [hook], [position])[hook][:, 0].float()
    targets = probe_targets(fit, variable)
    if column is not None:
        targets = [t for t in targets if t.column == column]
        if not targets:
            raise AnalysisError(f"{variable!r} has no column {column}")
    y = torch.stack([t.values(fit) for t in targets], 1)
    n_classes = [int(y[:, i].max()) + 1 for i in range(y.shape[1])]
    if rank_per_iteration < 1 or iterations < 1:
        raise AnalysisError(f"iterations={iterations} and rank_per_iteration={rank_per_iteration} "
                            "must be >= 1")
    basis = torch.zeros(x.shape[1], 0)
    accuracies = []

    def probe_accuracy(projected: Tensor):
        mean, std = projected.mean(0), projected.std(0).clamp(min=1e-6)
        z = ((projected - mean) / std)[:, None]
        weight, bias = fit_softmax_probes(z, y, n_classes, max_iter=max_iter)
        acc = float((predict_probes(z, weight, bias, n_classes)[:, 0] == y).float().mean())
        return acc, weight[0] / std[:, None]  # directions in the raw activation space

    for _ in range(iterations):
        acc, directions = probe_accuracy(x - (x @ basis) @ basis.T)
        accuracies.append(acc)
        directions = directions - basis @ (basis.T @ directions)
        u, sv, _ = torch.linalg.svd(directions, full_matrices=False)
        keep = min(rank_per_iteration, int((sv > 1e-6 * sv.max()).sum()))
        basis, _ = torch.linalg.qr(torch.cat([basis, u[:, :keep]], 1))
    accuracies.append(probe_accuracy(x - (x @ basis) @ basis.T)[0])
    return basis, accuracies


def random_basis(d_model: int, rank: int, seed: int) -> Tensor:
    """A uniformly random orthonormal basis of ``rank`` directions (the control)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d_model, rank, generator=gen))
    return q


def projection_hook(basis: Tensor, positions: list[int]):
    index = torch.tensor(positions)

    def hook(act: Tensor, hook) -> Tensor:
        b = basis.to(act.device, act.dtype)
        sel = act[:, index]
        act[:, index] = sel - (sel @ b) @ b.T
        return act

    return hook


def mean_hook(mean: Tensor, positions: list[int]):
    index = torch.tensor(positions)

    def hook(act: Tensor, hook) -> Tensor:
        act[:, index] = mean.to(act.device, act.dtype)
        return act

    return hook


@dataclass
class InterventionResult(Result):
    """Metrics with no intervention and under each intervention (one row each)."""

    frame: pd.DataFrame
    settings: dict = field(default_factory=dict)
    name = "interventions"

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def summary(self) -> dict:
        return {"settings": self.settings, "table": self.frame.to_dict(orient="records")}

    def figure(self):
        import plotly.express as px

        cols = [c for c in ("noisy_memorized_acc", "train_clean_acc", "test_acc") if c in self.frame]
        long = self.frame.melt(id_vars=["intervention"], value_vars=cols, var_name="metric",
                               value_name="accuracy")
        return px.bar(long, x="metric", y="accuracy", color="intervention", barmode="group",
                      range_y=[0, 1], title=f"Interventions on {self.settings.get('variable')}")


def intervene(model, groups: dict[str, Examples], fit: Examples, variable: str, *, layer: int,
              position: int, column: int | None = None, point: str = "pre", iterations: int = 3,
              rank_per_iteration: int = 8, seed: int = 0) -> InterventionResult:
    """Remove ``variable`` at (``layer``, ``point``, ``position``) by mean ablation and by INLP,
    beside a random subspace of INLP's rank; measure the memorization metrics under each.

    ``groups`` are the evaluation splits (``train_clean``, ``train_noisy``, ``test``); ``fit``
    holds clean examples to fit INLP and the ablation mean on.

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> s = task.generate(0).splits
    >>> res = intervene(model, s, s["train_clean"][:300], "column_sum", layer=0, position=4,
    ...                 iterations=1)
    >>> list(res.to_frame()["intervention"])
    ['none', 'mean_ablation', 'inlp', 'random_subspace']
    """
    for name, ex in groups.items():
        check_examples(model, ex, f"group {name!r}")
    hook = _resid_hook(layer, point)
    basis, inlp_acc = inlp_basis(model, fit, variable, layer=layer, point=point, position=position,
                                 column=column, iterations=iterations,
                                 rank_per_iteration=rank_per_iteration)
    mean = cached_activations(model, fit.tokens, [hook], [position])[hook].mean(0)
    control = random_basis(model.cfg.d_model, basis.shape[1], seed)
    variants = {
        "none": None,
        "mean_ablation": mean_hook(mean, [position]),
        "inlp": projection_hook(basis, [position]),
        "random_subspace": projection_hook(control, [position]),
    }
    rows = []
    for label, fn in variants.items():
        hooks = [] if fn is None else [(hook, fn)]
        with model.hooks(fwd_hooks=hooks):
            metrics = evaluate(model, groups)
        rows.append({"intervention": label, "rank": 0 if fn is None or label == "mean_ablation"
                     else basis.shape[1], **{k: v for k, v in metrics.items() if k.endswith("_acc")}})
    settings = {"variable": variable, "column": column, "layer": layer, "point": point, "position": position,
                "iterations": iterations, "inlp_rank": basis.shape[1],
                "inlp_probe_accuracy_before_each_iteration_and_after": inlp_acc}
    return InterventionResult(frame=pd.DataFrame(rows), settings=settings)
