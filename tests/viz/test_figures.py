"""Figures from a run directory's files; saved as self-contained HTML and as PNG."""

import re
import shutil

import pandas as pd
import pytest

from memlens.analysis.runner import load_analysis
from memlens.training.run import read_metrics
from memlens.viz import figures


@pytest.mark.parametrize("name", ["behaviour", "logit_lens", "probes", "patching", "interventions",
                                  "encoding", "neurons", "circuits"])
def test_each_analysis_figure_has_data_and_is_the_results_own(tiny_run, name):
    data = load_analysis(tiny_run, name)
    fig = figures.analysis_figure(name, data)
    assert fig.data and all(len(getattr(t, "z", None) if getattr(t, "z", None) is not None else
                                (t.y if t.y is not None else t.x)) > 0 for t in fig.data)
    # one renderer per analysis: the report's figure is the result class' own render
    from memlens.analysis.runner import RENDERERS

    assert fig.to_json() == RENDERERS[name](data).to_json()


def test_a_result_figure_equals_the_figure_of_its_json(fda_tiny):
    from memlens.analysis import behaviour

    task, model, data = fda_tiny
    s = data.splits
    res = behaviour(model, s["train_noisy"], s["test"][:50])
    assert res.figure().to_json() == figures.analysis_figure("behaviour", res.to_json()).to_json()


def test_dynamics_marks_the_phases(tiny_run):
    metrics = pd.DataFrame(read_metrics(tiny_run))
    fig = figures.dynamics(metrics, {"step_test_acc_0.9": 30, "step_noisy_memorized_0.5": None})
    assert [t.name for t in fig.data] == list(figures.CURVES.values())
    assert len(fig.layout.shapes) == 1  # one phase was reached, one was not


def test_save_writes_self_contained_html(tiny_run, tmp_path):
    fig = figures.analysis_figure("encoding", load_analysis(tiny_run, "encoding"))
    (html,) = figures.save(fig, tmp_path / "enc", png=False)
    text = html.read_text()
    assert html.name == "enc.html" and len(text) > 1_000_000  # plotly.js inlined
    assert not re.search(r'<script[^>]+src="http', text)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="kaleido needs Chromium (.ci/run installs it)")
def test_save_writes_png(tiny_run, tmp_path):
    fig = figures.analysis_figure("logit_lens", load_analysis(tiny_run, "logit_lens"))
    html, png = figures.save(fig, tmp_path / "lens")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_neuron_view_marks_noisy_examples_over_the_operand_grid():
    from memlens.analysis import AnalysisError
    from memlens.analysis.neurons import NeuronTable
    from memlens.tasks import make_task
    from memlens.viz.neuron_views import neuron_view

    ex = make_task("fda", preset="tiny").generate(0).train
    acts = (ex.intermediates["operand"][:, 0] >= 50).float()[:, None, None, None]
    fig = neuron_view(NeuronTable(acts, [1], [7], ex.is_noisy), ex, 1, 7, 0, bins=10)
    heat, noisy = fig.data
    assert len(noisy.x) == int(ex.is_noisy.sum())
    z = heat.z if not hasattr(heat.z, "tolist") else heat.z.tolist()
    assert z[0][0] == 0 and z[0][-1] == 1  # a range neuron on operand 0 (the x axis)
    with pytest.raises(AnalysisError, match="neuron 3 is out of range"):
        neuron_view(NeuronTable(acts, [1], [7], ex.is_noisy), ex, 1, 7, 3)


def test_token_activations_agree_with_the_neuron_table_and_refuse_bad_neurons():
    import torch

    from memlens.analysis import AnalysisError
    from memlens.analysis.neurons import neuron_table
    from memlens.models import ModelConfig, build_model
    from memlens.tasks import make_task
    from memlens.viz.neuron_views import token_activations, token_neuron_views_html

    task = make_task("fda", preset="tiny")
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=0).eval()
    ex = task.generate(0).train[:20]
    strings, acts = token_activations(model, ex, 1, [4, 9])
    assert strings[0][0] == "<bos>" and len(strings[0]) == ex.tokens.shape[1]
    table = neuron_table(model, ex, layers=[1])  # the answer-predicting positions only
    at_answer = acts[:, table.positions, :]
    assert torch.allclose(at_answer, table.acts[:, 0, :, :][..., [4, 9]], atol=1e-5)
    with pytest.raises(AnalysisError, match=r"neurons \[128\] out of range"):
        token_activations(model, ex, 1, [4, 128])
    with pytest.raises(AnalysisError, match="no neurons given"):
        token_activations(model, ex, 1, [])
    with pytest.raises(AnalysisError, match="layer=2 out of range"):
        token_neuron_views_html(model, {"clean": ex}, 2, [0])
