"""Claim 6 in one call: heuristic neurons, their outliers on noisy examples, a pre-memorization
null, and what resetting the outliers does.

:func:`neuron_study` runs :func:`~memlens.analysis.neurons.neuron_table`,
:func:`~memlens.analysis.heuristics.classify_neurons`,
:func:`~memlens.analysis.heuristics.score_outliers` and
:func:`~memlens.analysis.neuron_patching.neuron_patching` on a model's last layer, and the same
table, classification and outliers on ``null_model`` (the run's last checkpoint before
memorization). Its summary keeps, per neuron-position, whether it is an outlier, a heuristic
neuron, its variance decile and whether it is an outlier under the null, so that the scorecard
can resample neurons.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from memlens.backend import Model
from memlens.analysis.common import Result, check_examples, model_device
from memlens.analysis.heuristics import OutlierResult, classify_neurons, score_outliers
from memlens.analysis.neuron_patching import NeuronPatchingResult, neuron_patching
from memlens.analysis.neurons import neuron_table
from memlens.tasks.base import Examples


@dataclass
class NeuronStudyResult(Result):
    """Outliers of the final model (and of the null), and the reset experiment."""

    outliers: OutlierResult
    patching: NeuronPatchingResult | None
    null: OutlierResult | None = None
    null_note: str | None = None  # why there is no null, when there is none
    name = "neurons"

    def to_frame(self) -> pd.DataFrame:
        frame = self.outliers.to_frame()
        if self.null is not None:
            frame["null_outlier"] = self.null.outliers.numpy()
        return frame

    def summary(self) -> dict:
        heur = self.outliers.heuristics
        out = {"layers": heur.layers, "positions": heur.positions, "heuristics": heur.summary(),
               "outliers": self.outliers.summary(),
               "patching": None if self.patching is None else self.patching.summary(),
               "null": None if self.null is None else self.null.summary(),
               "null_note": self.null_note,
               "per_neuron": {
                   "outlier": self.outliers.outliers.int().tolist(),
                   "heuristic": heur.is_heuristic.int().tolist(),
                   "variance_decile": self.outliers.variance_deciles().tolist(),
                   "null_outlier": None if self.null is None else self.null.outliers.int().tolist(),
               }}
        return out

    @staticmethod
    def render(data: dict):
        """Each neuron-position's mean |z| on noisy examples against held-out clean ones;
        heuristic neurons coloured, outliers marked. Outliers sit high above the diagonal."""
        import numpy as np
        import plotly.express as px

        frame = pd.DataFrame(data["frame"])
        frame["kind"] = np.where(frame["heuristic"], "heuristic neuron", "other")
        fig = px.scatter(frame, x="clean_abs_z", y="noisy_abs_z", color="kind", symbol="outlier",
                         hover_data=["layer", "position", "neuron", "best_feature", "r2"])
        top = float(max(frame["clean_abs_z"].max(), frame["noisy_abs_z"].max(), 1.0))
        fig.add_shape(type="line", x0=0, y0=0, x1=top, y1=top, line={"dash": "dot", "color": "grey"})
        out = data["summary"]["outliers"]
        fig.update_layout(title=f"Neuron shifts on noisy examples: {out['n_outliers']} outliers, "
                                f"{out['n_outliers_heuristic']} heuristic", height=420,
                          xaxis_title="mean |z|, held-out clean examples",
                          yaxis_title="mean |z|, noisy selection half")
        return fig


def _outliers(model, examples: Examples, layer: int, seed: int) -> tuple:
    table = neuron_table(model, examples, layers=[layer])
    device = model_device(model)  # the per-value sums run where the model does
    heuristics = classify_neurons(table, examples, seed=seed, device=device)
    return table, score_outliers(table, examples, heuristics, seed=seed, device=device)


def neuron_study(model: Model, examples: Examples, *, null_model=None, null_note: str | None = None,
                 seed: int = 0, control_draws: int = 10) -> NeuronStudyResult:
    """Heuristics, outliers, the null and the reset experiment on the last layer's neurons at
    the answer-predicting positions. ``examples`` mixes clean and noisy training examples.

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> res = neuron_study(model, task.generate(0).train, control_draws=2)
    >>> sorted(res.summary()["per_neuron"])
    ['heuristic', 'null_outlier', 'outlier', 'variance_decile']
    """
    check_examples(model, examples)
    layer = model.cfg.n_layers - 1
    table, outliers = _outliers(model, examples, layer, seed)
    patching = (neuron_patching(model, examples, table, outliers, control_draws=control_draws, seed=seed)
                if outliers.outliers.any() else None)
    null = _outliers(null_model, examples, layer, seed)[1] if null_model is not None else None
    return NeuronStudyResult(outliers, patching, null, null_note)
