"""Interventions that remove an intermediate's information, and what they do to recall.

* **Mean ablation**: the activation at a hook point and positions is replaced by its mean over
  reference (clean) examples.
* **INLP** (iterative nullspace projection, Ravfogel et al. 2020): fit linear probes for the
  intermediate, project their weight directions out of the residual stream, refit on the projected
  activations, repeat until the probe reads no more than the majority class + ``tolerance`` (or
  ``max_iterations``); the union of directions is removed at the chosen position. Whether it got
  there (``removed``) is reported: an INLP that leaves the variable readable tests nothing.
* **Controls** of the same rank at the same place: random subspaces (``random_draws`` draws,
  averaged) and an INLP fitted on shuffled targets.

Each intervention is applied with a hook while the memorization metrics are measured (noisy
recall, clean training accuracy, test accuracy, per example), so the effect on memorized labels
is compared with the effect on reasoning and with the controls (claim 4d, a diagnostic).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from memlens.backend import Model
from memlens.analysis.common import AnalysisError, Result, cached_activations, check_examples
from memlens.analysis.probes import fit_softmax_probes, predict_probes, probe_targets
from memlens.analysis.resumed import ResumedRuns
from memlens.tasks.base import Examples
from memlens.training.metrics import with_answer


def _resid_hook(layer: int, point: str) -> str:
    if point not in ("pre", "mid", "post"):
        raise AnalysisError(f"point={point!r} is invalid: expected 'pre', 'mid' or 'post'")
    return f"blocks.{layer}.hook_resid_{point}"


def inlp_basis(model: Model, fit: Examples, variable: str, *, layer: int, point: str = "pre",
               position: int, column: int | None = None, iterations: int = 3,
               rank_per_iteration: int = 8, max_iter: int = 100, target_accuracy: float | None = None,
               shuffle_seed: int | None = None,
               activations: Tensor | None = None) -> tuple[Tensor, list[float]]:
    """Orthonormal basis ``(d_model, rank)`` of the directions INLP removes, and the probe
    accuracy before each iteration and after the last. Each iteration removes the
    ``rank_per_iteration`` strongest directions of the probe (top singular vectors of its
    weights): with many classes (200 THR entities) the full row space would be the whole
    residual stream. With ``target_accuracy``, iterations continue (up to ``iterations``) until
    the probe's accuracy is at most that. Iterations also stop once nothing readable is left
    (the basis spans every direction the activations vary in): the accuracy recorded then is the
    majority class's, what a probe reads from a constant. ``column`` restricts a multi-column intermediate to one
    column; by default every column is probed. ``shuffle_seed``: fit on shuffled targets (the
    control). ``activations``: the ``(n, d_model)`` residual stream of ``fit`` at the site, when
    the caller has it already (:func:`site_activations`)."""
    check_examples(model, fit, "fit examples")
    if not 0 <= layer < model.cfg.n_layers:
        raise AnalysisError(f"layer={layer} out of range: the model has layers 0..{model.cfg.n_layers - 1}")
    if not 0 <= position < fit.tokens.shape[1]:
        raise AnalysisError(f"position={position} out of range 0..{fit.tokens.shape[1] - 1}")
    if rank_per_iteration < 1 or iterations < 1:
        raise AnalysisError(f"iterations={iterations} and rank_per_iteration={rank_per_iteration} "
                            "must be >= 1")
    _resid_hook(layer, point)  # checks ``point``
    if activations is None:
        activations = site_activations(model, fit, layer, point, position)
    elif tuple(activations.shape) != (len(fit), model.cfg.d_model):
        raise AnalysisError(f"activations of shape {tuple(activations.shape)} do not fit "
                            f"{len(fit)} examples x d_model {model.cfg.d_model}")
    x = activations.float()
    y = _targets(fit, variable, column)
    if shuffle_seed is not None:
        y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(shuffle_seed))]
    n_classes = [int(y[:, i].max()) + 1 for i in range(y.shape[1])]
    d = x.shape[1]
    # A coordinate whose spread is below this is rounding noise, not information: standardized,
    # noise of ~1e-7 would become readable (it is a deterministic function of the input).
    noise_floor = 1e-5 * float(x.std(0).max())
    _, counts = torch.unique(y, dim=0, return_counts=True)
    constant_accuracy = float(counts.max() / len(y))  # what a probe reads from nothing
    basis = torch.zeros(d, 0)
    accuracies = []

    def probe_accuracy(basis: Tensor) -> tuple[float, Tensor | None]:
        """The probe reads coordinates in the orthogonal complement of ``basis`` (exactly what
        projecting it out leaves, with no rounding residue of the removed directions)."""
        complement = _complement(basis, d)
        if complement.shape[1] == 0:
            return constant_accuracy, None
        coords = x @ complement
        std = coords.std(0)
        live = std > noise_floor
        if not bool(live.any()):  # nothing left to read: only the bias, the majority class
            return constant_accuracy, None
        complement, coords, std = complement[:, live], coords[:, live], std[live]
        z = ((coords - coords.mean(0)) / std)[:, None]
        weight, bias = fit_softmax_probes(z, y, n_classes, max_iter=max_iter)
        acc = float((predict_probes(z, weight, bias, n_classes)[:, 0] == y).float().mean())
        return acc, complement @ (weight[0] / std[:, None])  # directions in the raw space

    for _ in range(iterations):
        acc, directions = probe_accuracy(basis)
        accuracies.append(acc)
        if directions is None or (target_accuracy is not None and acc <= target_accuracy):
            return basis, accuracies
        u, sv, _ = torch.linalg.svd(directions, full_matrices=False)
        keep = min(rank_per_iteration, int((sv > 1e-6 * sv.max()).sum()))
        basis, _ = torch.linalg.qr(torch.cat([basis, u[:, :keep]], 1))
    accuracies.append(probe_accuracy(basis)[0])
    return basis, accuracies


def site_activations(model: Model, examples: Examples, layer: int, point: str,
                     position: int) -> Tensor:
    """``(n, d_model)`` residual stream of ``examples`` at (``layer``, ``point``, ``position``)."""
    hook = _resid_hook(layer, point)
    if not 0 <= layer < model.cfg.n_layers:
        raise AnalysisError(f"layer={layer} out of range: the model has layers 0..{model.cfg.n_layers - 1}")
    if not 0 <= position < examples.tokens.shape[1]:
        raise AnalysisError(f"position={position} out of range 0..{examples.tokens.shape[1] - 1}")
    return cached_activations(model, examples.tokens, [hook], [position])[hook][:, 0]


def _complement(basis: Tensor, d: int) -> Tensor:
    """Orthonormal basis ``(d, d - rank)`` of the orthogonal complement of ``basis``'s span."""
    if basis.shape[1] == 0:
        return torch.eye(d)
    q, _ = torch.linalg.qr(torch.cat([basis, torch.eye(d)], 1))
    return q[:, basis.shape[1]:]


def _targets(fit: Examples, variable: str, column: int | None) -> Tensor:
    targets = probe_targets(fit, variable)
    if column is not None:
        targets = [t for t in targets if t.column == column]
        if not targets:
            raise AnalysisError(f"{variable!r} has no column {column}")
    return torch.stack([t.values(fit) for t in targets], 1)


def majority_accuracy(fit: Examples, variable: str, column: int | None) -> float:
    """Accuracy of always answering the most frequent value (all target columns at once)."""
    y = _targets(fit, variable, column)
    _, counts = torch.unique(y, dim=0, return_counts=True)
    return float(counts.max() / len(y))


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
    """Metrics with no intervention and under each intervention (one row each); per-example
    noisy recall under each (``examples``; the random control's is the mean over draws)."""

    frame: pd.DataFrame
    settings: dict = field(default_factory=dict)
    examples: dict[str, list[float]] = field(default_factory=dict)
    name = "interventions"

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def summary(self) -> dict:
        return {"settings": self.settings, "table": self.frame.to_dict(orient="records"),
                "examples": self.examples}

    @staticmethod
    def render(data: dict):
        return render_interventions(data)


def render_interventions(data: dict):
    """Accuracies under each intervention, one panel per intermediate (``item``) if several."""
    import plotly.express as px

    frame = pd.DataFrame(data["frame"])
    cols = [c for c in ("noisy_memorized_acc", "train_clean_acc", "test_acc") if c in frame]
    ids = ["intervention"] + (["item"] if "item" in frame else [])
    long = frame.melt(id_vars=ids, value_vars=cols, var_name="metric", value_name="accuracy")
    return px.bar(long, x="metric", y="accuracy", color="intervention", barmode="group",
                  facet_col="item" if "item" in frame else None, facet_col_wrap=4, range_y=[0, 1],
                  title="Interventions at each intermediate's site (INLP until removed; controls of "
                        "the same rank)")


METRIC = {"train_noisy": "noisy_memorized_acc", "train_clean": "train_clean_acc", "test": "test_acc"}


def intervene(model: Model, groups: dict[str, Examples], fit: Examples, variable: str, *, layer: int,
              position: int, column: int | None = None, point: str = "pre",
              max_iterations: int = 20, rank_per_iteration: int = 8, tolerance: float = 0.05,
              random_draws: int = 20, seed: int = 0, resume: bool = True) -> InterventionResult:
    """Remove ``variable`` at (``layer``, ``point``, ``position``) by mean ablation and by INLP
    (until its probe reads at most the majority class + ``tolerance``), beside random subspaces
    of INLP's rank (``random_draws``) and an INLP of shuffled targets of that rank; measure the
    memorization metrics under each, per example.

    ``groups`` are the evaluation splits (``train_clean``, ``train_noisy``, ``test``); ``fit``
    holds clean examples to fit INLP and the ablation mean on. ``resume=False`` runs the whole
    model under each intervention instead of resuming at the site (same values; the baseline
    of benchmarks/interventions.py).

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> s = task.generate(0).splits
    >>> res = intervene(model, s, s["train_clean"][:300], "column_sum", layer=0, position=4,
    ...                 max_iterations=1, random_draws=2)
    >>> list(res.to_frame()["intervention"])
    ['none', 'mean_ablation', 'inlp', 'random_subspace', 'shuffled_inlp']
    """
    for name, ex in groups.items():
        check_examples(model, ex, f"group {name!r}")
    if random_draws < 1:
        raise AnalysisError(f"random_draws={random_draws} is invalid: expected an integer >= 1")
    _resid_hook(layer, point)  # checks ``point`` before any run
    majority = majority_accuracy(fit, variable, column)
    target = majority + tolerance
    acts = site_activations(model, fit, layer, point, position)  # one run for INLP, mean, control
    basis, inlp_acc = inlp_basis(model, fit, variable, layer=layer, point=point, position=position,
                                 column=column, iterations=max_iterations,
                                 rank_per_iteration=rank_per_iteration, target_accuracy=target,
                                 activations=acts)
    rank = basis.shape[1]
    removed = inlp_acc[-1] <= target
    variants: dict[str, list] = {"none": [None]}
    mean = acts.mean(0, keepdim=True)  # (1, d_model): the site's one position
    variants["mean_ablation"] = [mean_hook(mean, [position])]
    if rank:
        shuffled, _ = inlp_basis(model, fit, variable, layer=layer, point=point, position=position,
                                 column=column, iterations=max(1, -(-rank // rank_per_iteration)),
                                 rank_per_iteration=rank_per_iteration, shuffle_seed=seed,
                                 activations=acts)
        variants["inlp"] = [projection_hook(basis, [position])]
        variants["random_subspace"] = [projection_hook(random_basis(model.cfg.d_model, rank, seed + i),
                                                       [position]) for i in range(random_draws)]
        variants["shuffled_inlp"] = [projection_hook(shuffled[:, :rank], [position])]
    rows, examples = [], {}
    # Teacher-forced on each example's trained label, resumed at the site where the backend can.
    runners = {g: ResumedRuns(model, with_answer(ex, ex.labels), ex.answer_pos.tolist(), layer, position,
                              resume=resume, site=_resid_hook(layer, point), batch=4096)
               for g, ex in groups.items()}
    for label, fns in variants.items():
        per_group = {}
        for fn in fns:
            for g, runner in runners.items():
                answered = (runner.logits(edit=fn).argmax(-1) == groups[g].labels).all(-1)
                per_group.setdefault(g, []).append(answered.float())
        means = {g: torch.stack(v).mean(0) for g, v in per_group.items()}
        if "train_noisy" in means:
            examples[label] = means["train_noisy"].tolist()
        rows.append({"intervention": label, "draws": len(fns),
                     "rank": rank if label in ("inlp", "random_subspace", "shuffled_inlp") else 0,
                     **{METRIC.get(g, f"{g}_acc"): float(m.mean()) for g, m in means.items()}})
    settings = {"variable": variable, "column": column, "layer": layer, "point": point,
                "position": position, "inlp_rank": rank, "majority": majority,
                "tolerance": tolerance, "removed": removed,
                "inlp_probe_accuracy_before_each_iteration_and_after": inlp_acc}
    return InterventionResult(frame=pd.DataFrame(rows), settings=settings, examples=examples)
