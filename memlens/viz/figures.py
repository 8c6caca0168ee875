"""Plotly figures built from what a run directory holds (metrics.jsonl, analysis/*.json).

Every function takes plain data (a metrics DataFrame, an analysis JSON dict) so that the report,
notebooks and scripts draw the same figures without loading a model; each analysis' figure is
drawn by its result class' ``render`` (:func:`analysis_figure`), the one renderer per analysis. :func:`save` writes a
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


def analysis_figure(name: str, data: dict) -> go.Figure:
    """The figure of analysis ``name`` from its JSON data (``RUN/analysis/<name>.json``): the
    same renderer as the result's own ``.figure()``.

    >>> analysis_figure("nope", {})
    Traceback (most recent call last):
    ...
    memlens.analysis.common.AnalysisError: no renderer for analysis 'nope'; known: ['behaviour', ...]
    """
    from memlens.analysis.common import AnalysisError
    from memlens.analysis.runner import RENDERERS

    if name not in RENDERERS:
        raise AnalysisError(f"no renderer for analysis {name!r}; known: {sorted(RENDERERS)}")
    return RENDERERS[name](data)


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
