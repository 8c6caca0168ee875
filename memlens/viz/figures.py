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


PATCH_BARS = (("noisy", "patch_change", "noisy recall, changing patch"),
              ("noisy", "patch_preserve", "noisy recall, preserving patch"),
              ("clean_heldout", "patch_change", "clean accuracy, changing patch"),
              ("clean_heldout", "patch_preserve", "clean accuracy, preserving patch"))


def patch_loss_by_run(summaries: dict[str, dict], title: str = "") -> go.Figure:
    """Across runs (seeds beside the pure-memorizer reference): the noisy recall and the clean
    accuracy lost when each intermediate's site is patched from a *changing* and from a
    *preserving* counterfactual of the same tokens, averaged over the intermediates given (claims
    4a and 5a score the task's claim-4 intermediates: ``memlens.viz.report.claim4_patching``; a computation through the intermediate loses more under the changing patch; a
    look-up keyed on the input loses as much under both).

    ``summaries`` maps a run's name to (entries of) the ``summary`` of its
    ``analysis/patching.json``.

    >>> one = {"noisy": {"mean": {"base": 1.0, "patch_change": 0.2, "patch_preserve": 0.9}}}
    >>> fig = patch_loss_by_run({"fda-small-s0": {"column_sum[0]": one}})
    >>> [round(float(v), 2) for v in fig.data[0].y], [round(float(v), 2) for v in fig.data[1].y]
    ([0.8], [0.1])
    """
    names = list(summaries)
    fig = go.Figure()
    for group, key, label in PATCH_BARS:
        lost = []
        for name in names:
            values = [s[group]["mean"]["base"] - s[group]["mean"][key]
                      for s in summaries[name].values()
                      if isinstance(s, dict) and s.get(group) and s[group]["mean"].get(key) is not None]
            lost.append(float(np.mean(values)) if values else None)
        if any(v is not None for v in lost):
            fig.add_trace(go.Bar(x=names, y=lost, name=label,
                                 marker_pattern_shape="/" if group != "noisy" else ""))
    fig.update_layout(title=title or "Lost under changing vs preserving patches", barmode="group",
                      yaxis_title="lost (before minus after the patch)", yaxis_range=[-0.05, 1.05],
                      height=380)
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
