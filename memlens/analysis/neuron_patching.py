"""Neuron patching: set chosen MLP neurons to given values and measure what the model still does.

The question (claim 6): if the neurons whose activations shift on noisy examples
(:func:`~memlens.analysis.heuristics.score_outliers`, chosen on one half of the noisy examples)
are set back to what their clean pattern predicts for the same input, on the *other* half, does
the model forget the memorized noisy labels while clean accuracy holds? Against controls with as
many neurons: other (non-outlier) heuristic neurons, and random neurons of the same table, each
also set to its clean prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from memlens.backend import Model
from memlens.analysis.common import AnalysisError, Result, model_device
from memlens.analysis.heuristics import HeuristicResult, OutlierResult, candidate_features, lookup
from memlens.analysis.neurons import NeuronTable
from memlens.analysis.resumed import ResumedRuns
from memlens.tasks.base import Examples
from memlens.training.metrics import answer_logits, with_answer

Neuron = tuple[int, int, int]  # (layer, position, neuron)


@torch.no_grad()
def logits_with_neurons(model: Model, examples: Examples, neurons: list[Neuron],
                        values: Float[Tensor, "n m"] | None, batch_size: int = 1024
                        ) -> Float[Tensor, "n answer_len vocab"]:
    """Answer logits of ``examples`` with ``neurons`` (``mlp.hook_post``) set to ``values``
    (one column per neuron; ``None``: no change). Setting neurons to their own values is a no-op.

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> ex = task.generate(0).test[:8]
    >>> zeroed = logits_with_neurons(model, ex, [(0, 6, 3)], torch.zeros(8, 1))
    >>> tuple(zeroed.shape)
    (8, 3, 15)
    """
    _check_neurons(model, examples.tokens.shape, neurons, values)
    device = model_device(model)
    out = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        vals = None if values is None else values[start:start + batch_size].to(device)
        with model.hooks(fwd_hooks=_neuron_hooks(neurons, vals, device)):
            out.append(answer_logits(model, batch.tokens.to(device), batch.answer_pos.to(device)).float().cpu())
    return torch.cat(out)


def _check_neurons(model: Model, shape: tuple[int, int], neurons: list[Neuron], values: Tensor | None) -> None:
    """Name a neuron out of range, or ``values`` not ``(examples, neurons)``; ``shape``: the
    tokens' (examples, positions)."""
    n, n_pos = shape
    if values is not None and tuple(values.shape) != (n, len(neurons)):
        raise AnalysisError(f"values have shape {tuple(values.shape)}; expected "
                            f"({n}, {len(neurons)}) = (examples, neurons)")
    for layer, pos, neuron in neurons:
        if not (0 <= layer < model.cfg.n_layers and 0 <= pos < n_pos and 0 <= neuron < model.cfg.d_mlp):
            raise AnalysisError(f"neuron (layer {layer}, position {pos}, neuron {neuron}) is out of "
                                f"range: layers 0..{model.cfg.n_layers - 1}, positions "
                                f"0..{n_pos - 1}, neurons 0..{model.cfg.d_mlp - 1}")


def _neuron_hooks(neurons: list[Neuron], vals: Tensor | None, device, offset: int = 0) -> list:
    """``mlp.hook_post`` hooks that set ``neurons`` to ``vals`` (one column each); ``offset``:
    the first position the hooked run covers (a run resumed at a later position)."""
    if vals is None:
        return []
    by_layer: dict[int, list[int]] = {}
    for j, (layer, _, _) in enumerate(neurons):
        by_layer.setdefault(layer, []).append(j)
    hooks = []
    for layer, cols in by_layer.items():
        pos = torch.tensor([neurons[j][1] - offset for j in cols], device=device)
        idx = torch.tensor([neurons[j][2] for j in cols], device=device)
        col = torch.tensor(cols, device=device)

        def hook(act, hook, pos=pos, idx=idx, col=col, vals=vals):
            act[:, pos, idx] = vals[:, col].to(act.dtype)
            return act

        hooks.append((f"blocks.{layer}.mlp.hook_post", hook))
    return hooks


def resumed_neuron_logits(runs: ResumedRuns, neurons: list[Neuron], values: Tensor | None) -> Tensor:
    """The logits of ``logits_with_neurons(model, examples, neurons, values)`` for the examples
    of ``runs`` (a :class:`~memlens.analysis.resumed.ResumedRuns` at the neurons' first layer
    and position), without rerunning what the neurons cannot change (on FDA small's last
    layer: 1 of 2 layers at 5 of 16 positions). Where ``runs`` resumes, a neuron before its
    layer or position is an error."""
    _check_neurons(runs.model, tuple(runs.tokens.shape), neurons, values)
    if runs.fast:
        bad = [n for n in neurons if n[0] < runs.layer or n[1] < runs.position]
        if bad:
            raise AnalysisError(f"neurons {bad[:3]} are before layer {runs.layer} or position "
                                f"{runs.position}, where this run resumes")
    # Neurons after the last answer-predicting position reach no answer logit (causal
    # attention), and the resumed run stops there.
    last = max(runs.answer_pos)
    reach = [j for j, n in enumerate(neurons) if n[1] <= last]
    if values is None or not reach:
        return runs.logits()
    neurons, values = [neurons[j] for j in reach], values[:, reach]
    device = model_device(runs.model)
    return runs.logits(hooks=lambda rows, first: _neuron_hooks(neurons, values[rows].to(device), device, first))


def _exact(logits: Tensor, target: Tensor) -> Tensor:
    """Per example: 1 when every answer slot's argmax is the target."""
    return (logits.argmax(-1) == target).all(-1).float()


@dataclass
class NeuronPatchingResult(Result):
    """Noisy recall (evaluation half) and clean accuracy with neurons set to their clean
    predictions: the outliers, and as many other heuristic neurons (``control_draws`` draws) and
    random neurons. ``per_example``: recall per noisy evaluation example per variant (the
    control's is the mean over draws)."""

    frame: pd.DataFrame
    per_example: dict[str, list[float]]
    n_control: int
    name = "neuron_patching"

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def summary(self) -> dict:
        return {"table": self.frame.to_dict(orient="records"), "n_control": self.n_control,
                "examples": self.per_example}

    @staticmethod
    def render(data: dict):
        import plotly.express as px

        return px.bar(pd.DataFrame(data["frame"]), x="variant",
                      y=["noisy_memorized_acc", "noisy_true_acc", "train_clean_acc"], barmode="group",
                      title="Neurons set to their clean prediction (noisy: held-out half)")


def neuron_patching(model: Model, examples: Examples, table: NeuronTable, outliers: OutlierResult, *,
                    control_draws: int = 10, random_draws: int = 3, seed: int = 0) -> NeuronPatchingResult:
    """Set the outliers (chosen on the noisy selection half) to their clean lookup predictions
    on the noisy *evaluation* half and on held-out clean examples; beside it, as many non-outlier
    heuristic neurons (``control_draws`` draws) and as many random neurons. Noisy examples are
    scored against their noisy label (recall) and, with the true label teacher-forced, against
    their true label."""
    heur: HeuristicResult = outliers.heuristics
    chosen = outliers.outliers.nonzero()[:, 0]
    k = len(chosen)
    if k == 0:
        raise AnalysisError("no outlier neurons to patch (lower z_threshold, or the model has "
                            "not memorized the noise)")
    feats = candidate_features(examples, None, heur.heuristic_families)
    clean_idx = (~examples.is_noisy).nonzero().flatten()
    noisy_idx = examples.is_noisy.nonzero().flatten()
    fit_rows = clean_idx[outliers.clean_fit]
    groups = {"noisy": noisy_idx[~outliers.selection], "clean": clean_idx[~outliers.clean_fit]}
    acts = table.acts.flatten(1)
    forced = Examples(**{**vars(examples), "tokens": with_answer(examples, examples.true_labels)})
    forced_feats = candidate_features(forced, None, heur.heuristic_families)

    def all_predictions(rows: Tensor, feature_set) -> Tensor:
        """Every neuron-position's clean lookup prediction for ``rows``: one lookup per feature."""
        out = torch.empty(len(rows), acts.shape[1])
        fit_acts = acts[fit_rows].to(model_device(model)).double()
        for name in set(heur.best_feature):
            cols = torch.tensor([k for k, f in enumerate(heur.best_feature) if f == name])
            out[:, cols] = lookup(feature_set.values[name][1][rows], feats.values[name][1][fit_rows],
                                  fit_acts[:, cols]).float().cpu()
        return out

    settings = (("recall", groups["noisy"], examples, feats, "labels"),
                ("true", groups["noisy"], forced, forced_feats, "true_labels"),
                ("clean", groups["clean"], examples, feats, "labels"))
    predictions = {key: all_predictions(rows, fs) for key, rows, _, fs, _ in settings}
    first_layer = min(table.layers)
    first_pos = min(min(table.positions), int(examples.answer_pos.min()))
    runs = {key: ResumedRuns(model, ex.tokens[rows], ex.answer_pos.tolist(), first_layer, first_pos)
            for key, rows, ex, _, _ in settings}

    def measure(cols: Tensor | None) -> dict[str, Tensor]:
        neurons = [] if cols is None else [heur.coords(c) for c in cols.tolist()]
        out = {}
        for key, rows, ex, fs, target in settings:
            vals = None if cols is None else predictions[key][:, cols]
            out[key] = _exact(resumed_neuron_logits(runs[key], neurons, vals), getattr(ex, target)[rows])
        return out

    gen = torch.Generator().manual_seed(seed)
    pool = (heur.is_heuristic & ~outliers.outliers).nonzero()[:, 0]
    n_control = min(k, len(pool))
    variants = {"none": [measure(None)], "outlier neurons": [measure(chosen)],
                "other heuristic neurons": [measure(pool[torch.randperm(len(pool), generator=gen)[:n_control]])
                                            for _ in range(control_draws)] if n_control else [],
                "random neurons": [measure(torch.randperm(acts.shape[1], generator=gen)[:k])
                                   for _ in range(random_draws)]}
    rows, per_example = [], {}
    for variant, draws in variants.items():
        if not draws:
            continue
        mean = {key: torch.stack([d[key] for d in draws]).mean(0) for key in draws[0]}
        per_example[variant] = mean["recall"].tolist()
        rows.append({"variant": variant, "draws": len(draws),
                     "n_neurons": 0 if variant == "none" else (n_control if variant.startswith("other") else k),
                     "noisy_memorized_acc": float(mean["recall"].mean()),
                     "noisy_true_acc": float(mean["true"].mean()),
                     "train_clean_acc": float(mean["clean"].mean())})
    return NeuronPatchingResult(frame=pd.DataFrame(rows), per_example=per_example, n_control=n_control)
