import pytest
import torch

from memlens.analysis import AnalysisError
from memlens.analysis.heuristics import classify_neurons, score_outliers
from memlens.analysis.neuron_patching import logits_with_neurons, neuron_patching, resumed_neuron_logits
from memlens.analysis.resumed import ResumedRuns
from memlens.analysis.neurons import neuron_table
from memlens.training.run import load_run


def test_setting_neurons_to_their_own_values_is_a_no_op(fda_tiny):
    _, model, data = fda_tiny
    ex = data.train[:64]
    table = neuron_table(model, ex)
    neurons = [(1, table.positions[0], 5), (0, table.positions[-1], 17), (1, table.positions[1], 0)]
    own = torch.stack([table.acts[:, table.layers.index(l), table.positions.index(p), n]
                       for l, p, n in neurons], 1)
    base = logits_with_neurons(model, ex, neurons, None)
    torch.testing.assert_close(logits_with_neurons(model, ex, neurons, own, batch_size=10), base,
                               atol=0, rtol=0)
    moved = logits_with_neurons(model, ex, neurons, own + 5.0)
    assert (moved - base).abs().max() > 1e-3  # and a real change does change the logits


def test_resumed_runs_equal_whole_runs(fda_tiny):
    """Resuming at the neurons' layer and first position (cached residual stream, keys and
    values) gives the whole run's answer logits with the same neurons set."""
    from memlens import backend

    _, model, data = fda_tiny
    ex = data.train[:50]
    table = neuron_table(model, ex)
    last = model.cfg.n_layers - 1
    first = min(min(table.positions), int(ex.answer_pos.min()))
    # The third neuron sits after the last answer-predicting position: it reaches no answer
    # logit, and the resumed run (which stops at that position) drops it.
    neurons = [(last, table.positions[0], 5), (last, table.positions[-1], 17),
               (last, ex.tokens.shape[1] - 1, 9)]
    assert ex.tokens.shape[1] - 1 > int(ex.answer_pos.max())
    vals = torch.randn(len(ex), 3) * 3
    runs = ResumedRuns(model, ex.tokens, ex.answer_pos.tolist(), last, first, batch=16)  # values sliced per chunk
    assert runs.fast == backend.can_resume(model)
    for values in (None, vals):
        torch.testing.assert_close(resumed_neuron_logits(runs, neurons, values),
                                   logits_with_neurons(model, ex, neurons, values), atol=1e-4, rtol=1e-4)
    from_start = ResumedRuns(model, ex.tokens, ex.answer_pos.tolist(), 0, 0)
    torch.testing.assert_close(resumed_neuron_logits(from_start, [(0, 2, 3)], vals[:, :1]),
                               logits_with_neurons(model, ex, [(0, 2, 3)], vals[:, :1]), atol=1e-4, rtol=1e-4)
    if runs.fast:
        with pytest.raises(AnalysisError, match="before layer"):
            resumed_neuron_logits(runs, [(0, table.positions[0], 1)], vals[:, :1])
    with pytest.raises(AnalysisError, match=r"values have shape \(50, 2\)"):
        resumed_neuron_logits(runs, neurons, vals[:, :2])
    with pytest.raises(AnalysisError, match="neuron \\(layer 1, position -1"):
        resumed_neuron_logits(runs, [(1, -1, 0)], vals[:, :1])


def test_bad_neurons_and_values(fda_tiny):
    _, model, data = fda_tiny
    ex = data.train[:4]
    with pytest.raises(AnalysisError, match="neuron \\(layer 9"):
        logits_with_neurons(model, ex, [(9, 0, 0)], torch.zeros(4, 1))
    with pytest.raises(AnalysisError, match=r"values have shape \(4, 2\)"):
        logits_with_neurons(model, ex, [(0, 0, 0)], torch.zeros(4, 2))


def test_neuron_patching_table_on_a_trained_tiny_run(tiny_run):
    run = load_run(tiny_run)
    ex = run.dataset.train
    table = neuron_table(run.model, ex, layers=[run.model.cfg.n_layers - 1])
    heur = classify_neurons(table, ex)
    out = score_outliers(table, ex, heur, z_threshold=0.05, ratio=1.0)
    assert out.outliers.any()
    res = neuron_patching(run.model, ex, table, out, control_draws=2, random_draws=2)
    frame = res.to_frame()
    k = int(out.outliers.sum())
    variants = list(frame["variant"])
    assert variants[:2] == ["none", "outlier neurons"] and variants[-1] == "random neurons"
    assert list(frame.set_index("variant").loc[["outlier neurons", "random neurons"], "n_neurons"]) == [k, k]
    # evaluated on the noisy half that did not choose the outliers
    n_eval = int((~out.selection).sum())
    assert len(res.per_example["outlier neurons"]) == n_eval
    base = frame.iloc[0]
    noisy = ex[ex.is_noisy][~out.selection]
    with torch.no_grad():
        logits = run.model(noisy.tokens)[:, noisy.answer_pos]
    assert base["noisy_memorized_acc"] == pytest.approx(
        float((logits.argmax(-1) == noisy.labels).all(-1).float().mean()))
    # the true-label accuracy is measured with the true label teacher-forced
    forced = noisy.tokens.clone()
    forced[:, noisy.answer_token_pos] = noisy.true_labels
    with torch.no_grad():
        logits = run.model(forced)[:, noisy.answer_pos]
    assert base["noisy_true_acc"] == pytest.approx(
        float((logits.argmax(-1) == noisy.true_labels).all(-1).float().mean()))
