"""Neuron views: a neuron's activation over the input space, with the noisy examples marked
(plotly, :func:`neuron_view`), and token-level activations of chosen neurons on chosen examples
(circuitsvis, :func:`token_neuron_views_html`).

FDA: a heatmap over the two operands (binned, mean activation of clean examples per cell) with
the noisy examples drawn on top, coloured by their activation: a memorized label riding on a
shifted heuristic neuron shows as noisy points whose colour departs from the cells around them.
With more than two operands, or THR, the x axis is the answer value (FDA) or the bridge entity
(THR) and the view is a scatter of activations.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch

from memlens.analysis.common import AnalysisError, model_device
from memlens.analysis.neurons import NeuronTable
from memlens.tasks.base import Examples
from memlens.viz.attention import render_view
from memlens.viz.notebook import ViewHTML


def neuron_view(table: NeuronTable, examples: Examples, layer: int, position: int, neuron: int,
                bins: int = 40, value: str | None = None) -> go.Figure:
    """The activation of one neuron of ``table`` (computed on ``examples``) over the inputs: a
    heatmap over two operands when the examples have an ``operand`` intermediate of two columns,
    else a scatter against ``value`` (default: the first one-column intermediate).

    >>> from memlens.tasks import make_task
    >>> ex = make_task("fda", preset="tiny").generate(0).train
    >>> acts = ex.intermediates["sum"].float()[:, None, None, None]
    >>> fig = neuron_view(NeuronTable(acts, [0], [7], ex.is_noisy), ex, 0, 7, 0)
    >>> [t.type for t in fig.data]
    ['heatmap', 'scatter']
    """
    if layer not in table.layers or position not in table.positions:
        raise AnalysisError(f"(layer {layer}, position {position}) is not in this table: layers "
                            f"{table.layers}, positions {table.positions}")
    if not 0 <= neuron < table.acts.shape[-1]:
        raise AnalysisError(f"neuron {neuron} is out of range: the table has 0..{table.acts.shape[-1] - 1}")
    if len(table.acts) != len(examples):
        raise AnalysisError(f"the table has {len(table.acts)} examples but {len(examples)} were given")
    act = table.acts[:, table.layers.index(layer), table.positions.index(position), neuron].numpy()
    noisy = examples.is_noisy.numpy()
    inter = examples.intermediates
    title = f"Neuron {neuron}, layer {layer}, position {position}"
    if value is None and "operand" in inter and inter["operand"].shape[1] == 2:
        a, b = inter["operand"][:, 0].numpy(), inter["operand"][:, 1].numpy()
        top = max(a.max(), b.max()) + 1
        edges = np.linspace(0, top, bins + 1)
        ia, ib = np.digitize(a, edges) - 1, np.digitize(b, edges) - 1
        total, count = np.zeros((bins, bins)), np.zeros((bins, bins))
        np.add.at(total, (ib[~noisy], ia[~noisy]), act[~noisy])
        np.add.at(count, (ib[~noisy], ia[~noisy]), 1)
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        centers = (edges[:-1] + edges[1:]) / 2
        lo, hi = float(np.nanmin(act)), float(np.nanmax(act))
        fig = go.Figure([
            go.Heatmap(x=centers, y=centers, z=mean, zmin=lo, zmax=hi, colorscale="Viridis",
                       colorbar={"title": "activation"}, name="clean (mean per cell)"),
            go.Scatter(x=a[noisy], y=b[noisy], mode="markers", name="noisy examples",
                       marker={"color": act[noisy], "colorscale": "Viridis", "cmin": lo, "cmax": hi,
                               "size": 6, "line": {"color": "white", "width": 1}}),
        ])
        fig.update_layout(title=title, xaxis_title="operand 0", yaxis_title="operand 1", height=520)
        return fig
    scalars = [k for k, v in inter.items() if v.ndim == 1]
    key = value if value is not None else (scalars[0] if scalars else None)
    if key not in scalars:
        raise AnalysisError(f"value={key!r} is not a one-column intermediate of these examples: "
                            f"expected one of {scalars}")
    x = inter[key].numpy()
    fig = go.Figure([go.Scatter(x=x[~noisy], y=act[~noisy], mode="markers", name="clean",
                                marker={"size": 3, "opacity": 0.5}),
                     go.Scatter(x=x[noisy], y=act[noisy], mode="markers", name="noisy",
                                marker={"size": 6, "symbol": "x"})])
    fig.update_layout(title=title, xaxis_title=key.replace("_", " "), yaxis_title="activation", height=420)
    return fig


@torch.no_grad()
def token_activations(model, examples: Examples, layer: int, neurons: list[int]
                      ) -> tuple[list[list[str]], torch.Tensor]:
    """Each example's token strings and the activations ``(n, pos, len(neurons))`` of
    ``neurons`` of layer ``layer``'s MLP (``mlp.hook_post``) at every token.

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> strings, acts = token_activations(model, task.generate(0).train[:2], 0, [3, 5])
    >>> len(strings), tuple(acts.shape) == (2, task.seq_len, 2)
    (2, True)
    """
    if not 0 <= layer < model.cfg.n_layers:
        raise AnalysisError(f"layer={layer} out of range: the model has layers 0..{model.cfg.n_layers - 1}")
    if not neurons:
        raise AnalysisError("no neurons given: pass neuron indices of the layer's MLP")
    bad = [n for n in neurons if not 0 <= n < model.cfg.d_mlp]
    if bad:
        raise AnalysisError(f"neurons {bad} out of range: layer {layer} has 0..{model.cfg.d_mlp - 1}")
    if len(examples) == 0:
        raise AnalysisError("no examples to show")
    name = f"blocks.{layer}.mlp.hook_post"
    _, cache = model.run_with_cache(examples.tokens.to(model_device(model)), return_type=None,
                                    names_filter=lambda n: n == name)
    acts = cache[name][..., list(neurons)].float().cpu()
    return [list(model.to_str_tokens(t)) for t in examples.tokens], acts


def token_neuron_views_html(model, groups: dict[str, Examples], layer: int, neurons: list[int],
                            per_group: int = 3, include_bundle: bool = True) -> ViewHTML:
    """Token-level activation views (circuitsvis ``TextNeuronActivations``, bundle inlined: works
    offline): per group, its first ``per_group`` examples with every token coloured by the
    activation of one of ``neurons`` (a selector picks the neuron and the example). A string
    that a notebook also displays inline (:class:`~memlens.viz.notebook.ViewHTML`).

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> s = task.generate(0).splits
    >>> html = token_neuron_views_html(model, {"clean": s["train_clean"], "noisy": s["train_noisy"]}, 0, [1, 2])
    >>> html.count("CircuitsVis.TextNeuronActivations"), html.count("unpkg.com")
    (2, 0)
    """
    parts = []
    for group, examples in groups.items():
        if len(examples) == 0:
            continue
        shown = examples[:per_group]
        strings, acts = token_activations(model, shown, layer, neurons)
        props = {"tokens": strings,
                 "activations": [a[:, None, :].tolist() for a in acts],  # [tokens x layers x neurons]
                 "firstDimensionName": "Layer", "secondDimensionName": "Neuron",
                 "firstDimensionLabels": [str(layer)], "secondDimensionLabels": [str(n) for n in neurons]}
        parts.append(render_view("TextNeuronActivations", props,
                                 f"{group}: {len(shown)} example(s), layer {layer}", "token-view"))
    return ViewHTML("\n".join(parts), ("circuitsvis",), include_bundles=include_bundle)
