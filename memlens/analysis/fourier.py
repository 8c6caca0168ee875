"""Periodic (generalizing) and non-periodic (memorizing) neurons: the inverse participation
ratio (IPR) over the Fourier basis of the inputs, and what pruning the low-IPR neurons does.

After Doshi et al. 2024 ("To grok or not to grok", arXiv 2310.13061): on modular arithmetic with
corrupted labels, the neurons of a network that generalizes are periodic in the inputs (their
weights concentrate on a few Fourier frequencies: high IPR) while the neurons that memorize the
corrupted labels are not (low IPR); pruning the low-IPR neurons lowers accuracy on the corrupted
labels and keeps or raises it on clean and test data.

Here, for a transformer, each MLP neuron's *activation* at the first answer-predicting position
is taken over the task's cyclic inputs (``TaskBase.cyclic_inputs``: name -> (position, order)):
on the full grid of input values when it has at most ``max_grid`` cells (every example's
activation averaged into its cell; unseen cells get the neuron's mean), else per input on its
own (the mean activation per value). The power spectrum of the (multi-dimensional) discrete
Fourier transform, without the constant term, with each frequency and its conjugate (``-f mod
order``, the same real sinusoid) summed into one real frequency, normalized to sum 1, gives
``IPR = sum(power ** 2)``: 1 for a neuron on one real frequency (a sinusoid of any phase),
``1 / n_frequencies`` for a flat one. A neuron constant over the inputs (a dead ReLU unit, say)
has no spectrum: its IPR is NaN, and pruning, which draws only among the neurons that vary,
leaves it alone (pruning a dead unit changes nothing and would flatten the low-IPR curve).
Pruning sets neurons' ``mlp.hook_post`` to 0 (silent, as pruning a ReLU unit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from memlens.backend import Model
from memlens.analysis.common import AnalysisError, Result, check_examples, check_layers, model_device
from memlens.analysis.neurons import neuron_table
from memlens.tasks.base import Examples


def cyclic_inputs(examples: Examples) -> dict[str, tuple[int, int]]:
    if not examples.origin:
        raise AnalysisError("these Examples carry no task origin: the task declares its cyclic inputs")
    from memlens.tasks import task_for

    task = task_for(examples)
    declared = getattr(task, "cyclic_inputs", None)
    if declared is None:
        raise AnalysisError(f"the {task.name} task declares no cyclic inputs (TaskBase.cyclic_inputs)")
    return declared()


def input_values(examples: Examples, inputs: dict[str, tuple[int, int]]) -> Tensor:
    """Per example, the value index of each cyclic input ``(n, inputs)``: its token id relative
    to the smallest token seen at that position (values are consecutive token ids)."""
    from memlens.tasks import task_for

    zero = task_for(examples).tokenizer.token_to_id("0")
    cols = [examples.tokens[:, pos] - zero for pos, _ in inputs.values()]
    values = torch.stack(cols, 1)
    orders = torch.tensor([order for _, order in inputs.values()])
    if (values < 0).any() or (values >= orders).any():
        raise AnalysisError("cyclic input tokens out of range: the task's cyclic_inputs do not "
                            "match its vocabulary")
    return values


def real_power(power: Tensor, orders: list[int]) -> Tensor:
    """Per-neuron power ``(k, *orders)`` of a real signal's DFT to power per real frequency
    ``(k, n_real)``: each frequency and its conjugate ``-f mod orders`` summed (a conjugate pair is
    one sinusoid; a self-conjugate frequency, ``order / 2`` for an even order, is its own), the
    constant term dropped.

    >>> real_power(torch.tensor([[0.0, 1.0, 2.0, 1.0]]), [4])
    tensor([[2., 2.]])
    """
    idx = torch.arange(int(np.prod(orders))).reshape(orders)
    conj = idx
    for dim in range(len(orders)):
        conj = torch.roll(torch.flip(conj, [dim]), 1, dim)  # index i -> (order - i) mod order
    idx, conj = idx.flatten(), conj.flatten()
    flat = power.flatten(1)
    pair, single = idx < conj, (idx == conj) & (idx > 0)
    return torch.cat([(flat + flat[:, conj])[:, pair], flat[:, single]], 1)


def ipr(acts: Tensor, values: Tensor, orders: list[int], max_grid: int = 100_000) -> tuple[Tensor, str]:
    """IPR of each neuron ``(k,)`` from activations ``(n, k)`` and input values ``(n, inputs)``;
    NaN for a neuron constant over the inputs (no power outside the constant term).

    >>> a = torch.arange(13).repeat(13); b = torch.arange(13).repeat_interleave(13)
    >>> periodic = torch.cos(2 * torch.pi * 3 * (a + b) / 13)
    >>> flat = torch.randn(169, generator=torch.Generator().manual_seed(0))
    >>> scores, mode = ipr(torch.stack([periodic, flat], 1), torch.stack([a, b], 1), [13, 13])
    >>> mode, round(float(scores[0]), 4), bool(scores[1] < 0.05)
    ('grid', 1.0, True)
    """
    acts = acts.double()
    if int(np.prod(orders)) <= max_grid:
        flat = torch.zeros(len(values), dtype=torch.long)
        for v, order in zip(values.T, orders):
            flat = flat * order + v
        cells = int(np.prod(orders))
        sums = torch.zeros(cells, acts.shape[1], dtype=torch.float64).index_add_(0, flat, acts)
        counts = torch.bincount(flat, minlength=cells).double()
        grid = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], acts.mean(0))
        spectrum = torch.fft.fftn(grid.T.reshape(-1, *orders), dim=tuple(range(1, len(orders) + 1)))
        power = real_power(spectrum.abs().pow(2), orders)
        total = spectrum.abs().pow(2).flatten(1).sum(1)
        mode = "grid"
    else:  # each input on its own: mean activation per value
        parts, total = [], torch.zeros(acts.shape[1], dtype=torch.float64)
        for v, order in zip(values.T, orders):
            sums = torch.zeros(order, acts.shape[1], dtype=torch.float64).index_add_(0, v, acts)
            means = sums / torch.bincount(v, minlength=order).double().clamp(min=1)[:, None]
            spectrum = torch.fft.fft(means.T, dim=1).abs().pow(2)
            parts.append(real_power(spectrum, [order]))
            total += spectrum.sum(1)
        power = torch.cat(parts, 1)
        mode = "marginal"
    varying = power.sum(1) > 1e-20 * total  # else constant up to rounding (or all zero)
    share = power / power.sum(1, keepdim=True).clamp(min=1e-300)
    scores = torch.where(varying, share.pow(2).sum(1), torch.nan)
    return scores.float(), mode


@torch.no_grad()
def _accuracies(model, groups: dict[str, Examples], layer: int, neurons: Tensor, position: int) -> dict:
    device = model_device(model)
    idx = neurons.to(device)

    def prune(act, hook):
        act[:, position, idx] = 0.0
        return act

    out = {}
    with model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", prune)] if len(neurons) else []):
        for name, ex in groups.items():
            logits = model(ex.tokens.to(device))[:, ex.answer_pos.to(device)]
            out[name] = float((logits.argmax(-1).cpu() == ex.labels).all(-1).float().mean())
    return out


@dataclass
class FourierResult(Result):
    """Per neuron: IPR (NaN: constant over the inputs); and accuracies with the lowest-IPR
    neurons pruned, beside random ones, both drawn among the neurons that vary."""

    layer: int
    position: int
    scores: Tensor
    mode: str
    pruning: pd.DataFrame
    name = "fourier"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"neuron": np.arange(len(self.scores)), "ipr": self.scores.numpy()})

    def summary(self) -> dict:
        scored = self.scores[~self.scores.isnan()].numpy()
        return {"layer": self.layer, "position": self.position, "mode": self.mode,
                "n_constant": int(self.scores.isnan().sum()),
                "ipr_quartiles": np.quantile(scored, [0.25, 0.5, 0.75]).tolist() if len(scored) else [],
                "pruning": self.pruning.to_dict(orient="records")}

    @staticmethod
    def render(data: dict):
        """IPR histogram, and accuracy against the share of neurons pruned (low IPR vs random)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        frame, pruning = pd.DataFrame(data["frame"]), pd.DataFrame(data["summary"]["pruning"])
        fig = make_subplots(rows=1, cols=2, subplot_titles=["neuron IPR", "pruning"])
        fig.add_trace(go.Histogram(x=frame["ipr"], nbinsx=40, name="IPR", showlegend=False), row=1, col=1)
        for (order, metric), part in pruning.groupby(["order", "metric"]):
            fig.add_trace(go.Scatter(x=part["share"], y=part["accuracy"], mode="lines+markers",
                                     name=f"{metric}, {order}",
                                     line={"dash": "dot" if order == "random" else "solid"}), row=1, col=2)
        fig.update_xaxes(title_text="IPR", row=1, col=1)
        fig.update_xaxes(title_text="share of neurons pruned", row=1, col=2)
        fig.update_yaxes(title_text="accuracy", range=[0, 1], row=1, col=2)
        fig.update_layout(title="Periodic neurons (high IPR) and pruning the least periodic ones",
                          height=380)
        return fig


def fourier_neurons(model: Model, examples: Examples, groups: dict[str, Examples], *,
                    layer: int | None = None, shares: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3),
                    random_draws: int = 5, seed: int = 0) -> FourierResult:
    """IPR of every MLP neuron of ``layer`` (default the last) at the first answer-predicting
    position, computed over ``examples`` (ideally every input); then accuracy of each ``groups``
    entry (e.g. ``train_clean``, ``train_noisy``: recall of the corrupted labels, ``test``)
    with the lowest-IPR ``share`` of neurons pruned, beside as many random neurons; the share is
    of the neurons that vary over the inputs (a constant one has no IPR and is never pruned).

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("modadd", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> data = task.generate(0)
    >>> every = data.train.concat([data.train, data.test])
    >>> res = fourier_neurons(model, every, data.splits, shares=(0.1,), random_draws=1)
    >>> res.mode, len(res.scores)
    ('grid', 128)
    """
    check_examples(model, examples)
    layer = check_layers(model, [model.cfg.n_layers - 1 if layer is None else layer])[0]
    bad = [s for s in shares if not 0 < s < 1]
    if bad:
        raise AnalysisError(f"shares {bad} are invalid: expected numbers in (0, 1)")
    if not isinstance(random_draws, int) or random_draws < 1:
        raise AnalysisError(f"random_draws={random_draws!r} is invalid: expected an integer >= 1")
    inputs = cyclic_inputs(examples)
    position = int(examples.answer_pos[0])
    table = neuron_table(model, examples, layers=[layer], positions=[position])
    scores, mode = ipr(table.acts[:, 0, 0], input_values(examples, inputs),
                       [order for _, order in inputs.values()])
    pool = (~scores.isnan()).nonzero().flatten()
    if not len(pool):
        raise AnalysisError(f"no neuron of layer {layer} varies over the cyclic inputs: IPR is undefined")
    ranked = pool[scores[pool].argsort()]
    gen = torch.Generator().manual_seed(seed)
    rows = []
    base = _accuracies(model, groups, layer, torch.zeros(0, dtype=torch.long), position)
    for metric, acc in base.items():
        rows += [{"order": o, "share": 0.0, "metric": metric, "accuracy": acc} for o in ("low IPR", "random")]
    for share in shares:
        k = max(1, int(round(share * len(pool))))
        low = _accuracies(model, groups, layer, ranked[:k], position)
        draws = [_accuracies(model, groups, layer, pool[torch.randperm(len(pool), generator=gen)[:k]],
                             position) for _ in range(random_draws)]
        for metric in base:
            rows.append({"order": "low IPR", "share": share, "metric": metric, "accuracy": low[metric]})
            rows.append({"order": "random", "share": share, "metric": metric,
                         "accuracy": float(np.mean([d[metric] for d in draws]))})
    return FourierResult(layer, position, scores, mode, pd.DataFrame(rows))
