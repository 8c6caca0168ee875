"""A neuron's activation over the input space, with the noisy examples marked (plotly).

FDA: a heatmap over the two operands (binned, mean activation of clean examples per cell) with
the noisy examples drawn on top, coloured by their activation: a memorized label riding on a
shifted heuristic neuron shows as noisy points whose colour departs from the cells around them.
With more than two operands, or THR, the x axis is the answer value (FDA) or the bridge entity
(THR) and the view is a scatter of activations.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from memlens.analysis.common import AnalysisError
from memlens.analysis.neurons import NeuronTable
from memlens.tasks.base import Examples


def neuron_view(table: NeuronTable, examples: Examples, layer: int, position: int, neuron: int,
                bins: int = 40) -> go.Figure:
    """The activation of one neuron of ``table`` (computed on ``examples``) over the inputs.

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
    if "operand" in inter and inter["operand"].shape[1] == 2:
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
    key = "sum" if "sum" in inter else "bridge_entity"
    x = inter[key].numpy()
    fig = go.Figure([go.Scatter(x=x[~noisy], y=act[~noisy], mode="markers", name="clean",
                                marker={"size": 3, "opacity": 0.5}),
                     go.Scatter(x=x[noisy], y=act[noisy], mode="markers", name="noisy",
                                marker={"size": 6, "symbol": "x"})])
    fig.update_layout(title=title, xaxis_title=key.replace("_", " "), yaxis_title="activation", height=420)
    return fig
