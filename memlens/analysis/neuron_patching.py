"""Neuron patching: set chosen MLP neurons to given values and measure what the model still does.

The question (claim 6 of the paper): if the neurons whose activations shift on noisy examples
(:func:`~memlens.analysis.heuristics.score_outliers`) are set back to what their clean pattern
predicts for the same input, does the model forget the memorized noisy labels, while clean
accuracy holds? Against two controls with as many neurons: random neurons of the same table,
and the neurons most important for clean examples (largest mean |activation x gradient| of the
clean labels' log-probability), each also set to its clean prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from memlens.analysis.common import AnalysisError, Result, model_device
from memlens.analysis.heuristics import HeuristicResult, OutlierResult, _lookup, task_features
from memlens.analysis.neurons import NeuronTable
from memlens.tasks.base import Examples
from memlens.training.metrics import answer_logits

Neuron = tuple[int, int, int]  # (layer, position, neuron)


@torch.no_grad()
def logits_with_neurons(model, examples: Examples, neurons: list[Neuron],
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
    if values is not None and tuple(values.shape) != (len(examples), len(neurons)):
        raise AnalysisError(f"values have shape {tuple(values.shape)}; expected "
                            f"({len(examples)}, {len(neurons)}) = (examples, neurons)")
    for layer, pos, neuron in neurons:
        if not (0 <= layer < model.cfg.n_layers and 0 <= pos < examples.tokens.shape[1]
                and 0 <= neuron < model.cfg.d_mlp):
            raise AnalysisError(f"neuron (layer {layer}, position {pos}, neuron {neuron}) is out of "
                                f"range: layers 0..{model.cfg.n_layers - 1}, positions "
                                f"0..{examples.tokens.shape[1] - 1}, neurons 0..{model.cfg.d_mlp - 1}")
    device = model_device(model)
    by_layer: dict[int, list[int]] = {}
    for j, (layer, _, _) in enumerate(neurons):
        by_layer.setdefault(layer, []).append(j)
    out = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        hooks = []
        if values is not None:
            vals = values[start:start + batch_size].to(device)
            for layer, cols in by_layer.items():
                pos = torch.tensor([neurons[j][1] for j in cols], device=device)
                idx = torch.tensor([neurons[j][2] for j in cols], device=device)
                col = torch.tensor(cols, device=device)

                def hook(act, hook, pos=pos, idx=idx, col=col, vals=vals):
                    act[:, pos, idx] = vals[:, col].to(act.dtype)
                    return act

                hooks.append((f"blocks.{layer}.mlp.hook_post", hook))
        with model.hooks(fwd_hooks=hooks):
            out.append(answer_logits(model, batch.tokens.to(device), batch.answer_pos.to(device)).float().cpu())
    return torch.cat(out)


def _exact(logits: Tensor, target: Tensor) -> float:
    return float((logits.argmax(-1) == target).all(-1).float().mean()) if len(target) else float("nan")


def clean_importance(model, clean: Examples, table: NeuronTable, batch_size: int = 512) -> Float[Tensor, " k"]:
    """Mean |activation x gradient| of the clean labels' log-probability, per table neuron."""
    device = model_device(model)
    names = [f"blocks.{layer}.mlp.hook_post" for layer in table.layers]
    pos = torch.tensor(table.positions, device=device)
    total = torch.zeros(len(table.layers), len(table.positions), table.acts.shape[-1], device=device)
    for start in range(0, len(clean), batch_size):
        batch = clean[start:start + batch_size]
        kept = {}

        def keep(act, hook):
            act.retain_grad()
            kept[hook.name] = act
            return act

        with model.hooks(fwd_hooks=[(n, keep) for n in names]):
            logits = answer_logits(model, batch.tokens.to(device), batch.answer_pos.to(device))
            logp = logits.float().log_softmax(-1).gather(-1, batch.labels.to(device)[..., None]).sum()
            logp.backward()
        for i, name in enumerate(names):
            act = kept[name]
            total[i] += (act[:, pos] * act.grad[:, pos]).abs().sum(0).detach()
    model.zero_grad(set_to_none=True)
    return (total / len(clean)).flatten().cpu()


@dataclass
class NeuronPatchingResult(Result):
    frame: pd.DataFrame

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def summary(self) -> dict:
        return {"table": self.frame.to_dict(orient="records")}

    def figure(self):
        import plotly.express as px

        return px.bar(self.frame, x="variant", y=["noisy_memorized_acc", "train_clean_acc"],
                      barmode="group", title="Neurons set to their clean prediction")


def neuron_patching(model, examples: Examples, table: NeuronTable, outliers: OutlierResult, *,
                    random_draws: int = 3, seed: int = 0) -> NeuronPatchingResult:
    """Noisy recall and clean accuracy with the outlier neurons set to their clean predictions,
    beside as many random neurons and as many clean-important neurons (the controls)."""
    heur: HeuristicResult = outliers.heuristics
    chosen = outliers.outliers.nonzero()[:, 0]
    k = len(chosen)
    if k == 0:
        raise AnalysisError("no outlier neurons to patch (lower z_threshold, or the model has "
                            "not memorized the noise)")
    feats = task_features(examples)
    clean, noisy = ~examples.is_noisy, examples.is_noisy
    acts = table.acts.flatten(1)

    def predicted(cols: Tensor) -> Tensor:
        out = torch.empty(len(examples), len(cols))
        for j, col in enumerate(cols.tolist()):
            values = feats[heur.best_feature[col]][1]
            out[:, j] = _lookup(values, values[clean], acts[clean][:, col:col + 1])[:, 0]
        return out

    def neurons_of(cols: Tensor) -> list[Neuron]:
        n_pos, d_mlp = len(table.positions), table.acts.shape[-1]
        return [(table.layers[c // (n_pos * d_mlp)], table.positions[(c // d_mlp) % n_pos], c % d_mlp)
                for c in cols.tolist()]

    def measure(variant: str, cols: Tensor | None) -> dict:
        vals = None if cols is None else predicted(cols)
        neurons = [] if cols is None else neurons_of(cols)
        logits = logits_with_neurons(model, examples, neurons, vals)
        return {"variant": variant, "n_neurons": 0 if cols is None else len(cols),
                "noisy_memorized_acc": _exact(logits[noisy], examples.labels[noisy]),
                "noisy_true_acc": _exact(logits[noisy], examples.true_labels[noisy]),
                "train_clean_acc": _exact(logits[clean], examples.labels[clean])}

    rows = [measure("none", None), measure("outlier neurons", chosen)]
    gen = torch.Generator().manual_seed(seed)
    draws = [measure("random neurons", torch.randperm(acts.shape[1], generator=gen)[:k])
             for _ in range(random_draws)]
    mean_draw = {key: sum(d[key] for d in draws) / len(draws) for key in draws[0]
                 if key not in ("variant", "n_neurons")}
    mean_draw = {"variant": f"random neurons (mean of {random_draws})", "n_neurons": k, **mean_draw}
    rows.append(mean_draw)
    importance = clean_importance(model, examples[clean], table)
    rows.append(measure("clean-important neurons", importance.topk(k).indices))
    return NeuronPatchingResult(frame=pd.DataFrame(rows))
