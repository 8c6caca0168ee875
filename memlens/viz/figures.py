"""Plotly figures built from what a run directory holds (metrics.jsonl, analysis/*.json).

Every function takes plain data (a metrics DataFrame, an analysis JSON dict) so that the report,
notebooks and scripts draw the same figures without loading a model. :func:`save` writes a
figure as self-contained HTML (plotly.js inlined) and, where kaleido and a Chromium are present,
as PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from memlens.io import atomic_path

CURVES = {
    "train_clean_acc": "clean training",
    "noisy_memorized_acc": "noisy: memorized label",
    "noisy_true_acc": "noisy: true label",
    "test_acc": "test",
}


def dynamics(metrics: pd.DataFrame, phases: dict | None = None, title: str = "") -> go.Figure:
    """The four accuracy curves against the step (log axis), with the phase steps marked.

    >>> df = pd.DataFrame({"step": [0, 10, 100], "train_clean_acc": [0, .5, 1.],
    ...                    "noisy_memorized_acc": [0, 0, .9], "noisy_true_acc": [0, .4, .1],
    ...                    "test_acc": [0, .5, .95]})
    >>> len(dynamics(df).data)
    4
    """
    df = metrics[metrics["step"] > 0]
    fig = go.Figure()
    for column, name in CURVES.items():
        if column in df:
            fig.add_trace(go.Scatter(x=df["step"], y=df[column], mode="lines+markers", name=name,
                                     marker={"size": 4}))
    for key, value in (phases or {}).items():
        if key.startswith("step_") and value:
            label = key.removeprefix("step_").replace("_", " ")
            fig.add_vline(x=value, line_dash="dot", line_color="grey")
            # On a log axis, annotations (unlike shapes) take log10 coordinates.
            fig.add_annotation(x=math.log10(value), y=0.5, yref="paper", text=f"{label}: step {value}",
                               textangle=-90, showarrow=False, font_size=9, xshift=-7)
    fig.update_layout(title=title or "Training dynamics", xaxis_title="step", xaxis_type="log",
                      yaxis_title="exact-match accuracy", yaxis_range=[-0.02, 1.02], height=380)
    return fig


def logit_lens(data: dict, title: str = "") -> go.Figure:
    """Mean probability of the true and the noisy label at each residual point, per group."""
    frame = pd.DataFrame(data["frame"])
    mean = frame.groupby(["group", "target", "point_index", "point"], as_index=False)["mean_prob"].mean()
    mean["curve"] = mean["group"] + ": " + mean["target"] + " label"
    mean = mean.sort_values("point_index")
    fig = px.line(mean, x="point", y="mean_prob", color="curve", markers=True)
    fig.update_layout(title=title or "Logit lens", yaxis_title="mean probability", height=380)
    return fig


def probes(data: dict, title: str = "") -> go.Figure:
    """Probe accuracy by residual point x position, averaged over each variable's targets, for
    held-out clean and for noisy examples."""
    frame = pd.DataFrame(data["frame"])
    groups = [g for g in ("clean_heldout", "noisy") if g in set(frame["group"])]
    variables = list(dict.fromkeys(frame["variable"]))
    points = list(dict.fromkeys(frame["point"]))
    positions = sorted(frame["position"].unique())
    grid = np.full((len(variables) * len(groups), len(points), len(positions)), np.nan)
    names = []
    for vi, var in enumerate(variables):
        for gi, group in enumerate(groups):
            sub = frame[(frame["variable"] == var) & (frame["group"] == group)]
            acc = sub.groupby(["point", "position"])["accuracy"].mean()
            for (point, pos), value in acc.items():
                grid[vi * len(groups) + gi, points.index(point), positions.index(pos)] = value
            names.append(f"{var}, {group}")
    fig = px.imshow(grid, facet_col=0, facet_col_wrap=len(groups), zmin=0, zmax=1,
                    color_continuous_scale="Viridis", aspect="auto",
                    x=[str(p) for p in positions], y=points, labels={"color": "accuracy"})
    for i, name in enumerate(names):
        fig.layout.annotations[i].text = name
    fig.update_layout(title=title or "Linear probes", height=260 * len(variables) + 80)
    return fig


def patching(data: dict, title: str = "") -> go.Figure:
    """Per patched intermediate: the noisy recall drop and the clean moved rate over layer x position."""
    frame = pd.DataFrame(data["frame"])
    items = list(dict.fromkeys(frame["item"]))
    layers = sorted(frame["layer"].unique())
    positions = sorted(frame["position"].unique())
    panels, names = [], []
    for item in items:
        for group, column, label in (("noisy", "recall_drop", "noisy recall drop"),
                                     ("clean", "moved_rate", "clean moved to counterfactual")):
            sub = frame[(frame["item"] == item) & (frame["group"] == group)]
            grid = np.full((len(layers), len(positions)), np.nan)
            for row in sub.itertuples():
                grid[layers.index(row.layer), positions.index(row.position)] = getattr(row, column)
            panels.append(grid)
            names.append(f"{item}: {label}")
    fig = px.imshow(np.stack(panels), facet_col=0, facet_col_wrap=2, zmin=0, zmax=1, aspect="auto",
                    color_continuous_scale="Magma", x=[str(p) for p in positions],
                    y=[f"L{l}" for l in layers], labels={"color": "rate"},
                    facet_row_spacing=0.02)
    for i, name in enumerate(names):
        fig.layout.annotations[i].text = name
    fig.update_layout(title=title or "Patching intermediates", height=150 * len(items) + 100)
    return fig


def encoding(data: dict, title: str = "") -> go.Figure:
    """Mean effect of resampling each input on label recall, clean against noisy examples."""
    summary = data["summary"]
    fig = go.Figure()
    for group in ("clean", "noisy"):
        effects = summary.get(group, {}).get("mean_effect_by_input", {})
        fig.add_trace(go.Bar(x=list(effects), y=list(effects.values()), name=group))
    fig.update_layout(title=title or "Which inputs the label's recall depends on", barmode="group",
                      xaxis_title="input", yaxis_title="mean drop in label log-probability", height=340)
    return fig


def neurons(data: dict, title: str = "") -> go.Figure:
    """Each last-layer neuron's mean |z| on noisy examples against held-out clean ones; heuristic
    neurons coloured. Outliers sit high above the diagonal."""
    frame = pd.DataFrame(data["frame"])
    frame["kind"] = np.where(frame["heuristic"], "heuristic neuron", "other")
    fig = px.scatter(frame, x="clean_abs_z", y="noisy_abs_z", color="kind", symbol="outlier",
                     hover_data=["layer", "position", "neuron", "best_feature", "r2"])
    top = float(max(frame["clean_abs_z"].max(), frame["noisy_abs_z"].max(), 1.0))
    fig.add_shape(type="line", x0=0, y0=0, x1=top, y1=top, line={"dash": "dot", "color": "grey"})
    fig.update_layout(title=title or "Neuron shifts on noisy examples", height=420,
                      xaxis_title="mean |z|, held-out clean examples", yaxis_title="mean |z|, noisy examples")
    return fig


def circuits(data: dict, title: str = "") -> go.Figure:
    """Edge attribution scores (writer x reader) of the clean and of the noisy circuit."""
    frame = pd.DataFrame(data["frame"])
    writers = list(dict.fromkeys(frame["writer"]))
    readers = list(dict.fromkeys(frame.sort_values("reader", key=lambda c: c.map(
        {r: i for i, r in enumerate(dict.fromkeys(frame["reader"]))}))["reader"]))
    panels = []
    for group in ("clean", "noisy"):
        grid = np.zeros((len(writers), len(readers)))
        for row in frame[frame["group"] == group].itertuples():
            grid[writers.index(row.writer), readers.index(row.reader)] = row.score
        panels.append(grid)
    top = float(np.abs(np.stack(panels)).max()) or 1.0
    fig = px.imshow(np.stack(panels), facet_col=0, x=readers, y=writers, zmin=-top, zmax=top,
                    color_continuous_scale="RdBu", aspect="auto", labels={"color": "score"})
    for i, name in enumerate(("clean examples", "noisy examples")):
        fig.layout.annotations[i].text = name
    o = data["summary"]["overlap"]
    fig.update_layout(title=title or f"Edge attribution: top-{o['k']} IoU {o['iou']:.2f} (random "
                      f"{o['random_iou']:.2f}), weighted Jaccard {o['weighted_jaccard']:.2f}", height=420)
    return fig


def records_html(records: list[dict]) -> str:
    """A list of flat dicts as an HTML table."""
    return pd.DataFrame(records).to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)


def table_html(data: dict, columns: list[str] | None = None, max_rows: int = 200) -> str:
    """An analysis frame as an HTML table (for interventions)."""
    frame = pd.DataFrame(data["frame"])
    if columns:
        frame = frame[[c for c in columns if c in frame]]
    return frame.head(max_rows).to_html(index=False, float_format=lambda v: f"{v:.3f}",
                                        classes="table", border=0)


def save(fig: go.Figure, stem: str | Path, png: bool = True) -> list[Path]:
    """Write ``stem.html`` (self-contained) and, if kaleido can, ``stem.png``; returns the paths."""
    stem = Path(stem)
    written = []
    with atomic_path(stem.with_suffix(".html")) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)
    written.append(stem.with_suffix(".html"))
    if png:
        with atomic_path(stem.with_suffix(".png")) as tmp:
            fig.write_image(str(tmp), format="png")
        written.append(stem.with_suffix(".png"))
    return written
