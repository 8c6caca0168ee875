"""The heuristic classifier recovers planted neurons; outlier scoring flags planted shifts only."""

import pytest
import torch

from memlens.analysis import AnalysisError
from memlens.analysis.heuristics import classify_neurons, score_outliers
from memlens.analysis.neurons import NeuronTable
from memlens.tasks import make_task


@pytest.fixture(scope="module")
def fda_small_data():
    return make_task("fda", preset="small").generate(0).train  # 10,000 examples, 1,000 noisy


def planted(ex, seed=0):
    """Four neurons: a sum range, sum mod 7, the carry into column 2, and pure noise."""
    gen = torch.Generator().manual_seed(seed)
    s = ex.intermediates["sum"].double()
    cols = [((s >= 5000) & (s < 8000)).double(),
            (ex.intermediates["sum"] % 7 == 3).double(),
            ex.intermediates["carry"][:, 2].double(),
            torch.zeros_like(s)]
    acts = torch.stack(cols, 1) + 0.1 * torch.randn(len(s), 4, generator=gen, dtype=torch.float64)
    return acts.float()[:, None, None, :]  # (n, layer, pos, neuron)


def test_planted_neurons_are_classified(fda_small_data):
    ex = fda_small_data
    res = classify_neurons(NeuronTable(planted(ex), [1], [10], ex.is_noisy), ex)
    assert res.best_feature[:3] == ["sum range (width 1000)", "sum mod 7", "carry into column 2"]
    assert res.family[:3] == ["range", "mod", "carry"]
    assert (res.r2[:3] > 0.8).all() and res.r2[3] < 0.1
    assert res.is_heuristic.tolist() == [True, True, True, False]
    assert res.ranges[0] == (5000, 8000)
    counts = res.counts()
    assert counts.loc[1, "none"] == 1 and counts.loc[1, "mod"] == 1


def test_outliers_flag_planted_shifts_on_noisy_examples_only(fda_small_data):
    ex = fda_small_data
    acts = planted(ex, seed=1)
    acts[ex.is_noisy, 0, 0, 1] += 1.5  # memorization shifts the mod-7 neuron on noisy examples
    table = NeuronTable(acts, [1], [10], ex.is_noisy)
    heur = classify_neurons(table, ex)
    out = score_outliers(table, ex, heur)
    assert out.outliers.tolist() == [False, True, False, False]
    assert out.neuron_score[1] > 3 and out.neuron_score[0] < 0.5
    assert out.summary()["share_heuristic"] == 1.0
    # well-fit heuristic neurons are not outliers by construction: z is in units of the
    # activation's sd, not of the (tiny) residual sd
    assert out.heldout_clean_abs_z[:3].max() < 0.5


def test_bad_input(fda_small_data, thr_tiny):
    ex = fda_small_data
    with pytest.raises(AnalysisError, match="150 clean examples are too few.*at least 200"):
        few = ex[~ex.is_noisy][:150]
        classify_neurons(NeuronTable(planted(few), [1], [10], few.is_noisy), few)
    with pytest.raises(AnalysisError, match="the table has 10 examples but 20"):
        classify_neurons(NeuronTable(planted(ex[:10]), [1], [10], ex.is_noisy[:10]), ex[:20])
    _, _, thr = thr_tiny
    t = thr.train[:300]
    t.origin = None  # no task to ask for features
    with pytest.raises(AnalysisError, match="no task origin: pass features="):
        classify_neurons(NeuronTable(torch.zeros(300, 1, 1, 2), [0], [3], t.is_noisy), t)


def test_previous_answer_token_neuron_is_not_a_heuristic_outlier(fda_small_data):
    """A neuron that reads the teacher-forced previous answer digit looks like a sum-digit
    heuristic on clean data and shifts on noisy data (whose visible digit is the noisy one),
    with no memorization at all: the answer-token feature must explain it."""
    ex = fda_small_data
    lay_pos = int(ex.answer_pos[1])  # predicts answer slot 1: answer token 0 is visible here
    visible = ex.tokens[:, int(ex.answer_token_pos[0])].double()
    gen = torch.Generator().manual_seed(0)
    acts = (visible == visible[0]).double() + 0.05 * torch.randn(len(ex), generator=gen, dtype=torch.float64)
    acts = acts.float()[:, None, None, None]
    table = NeuronTable(acts, [1], [lay_pos], ex.is_noisy)
    heur = classify_neurons(table, ex)
    assert heur.family == ["answer_token"] and not heur.is_heuristic.any()
    out = score_outliers(table, ex, heur)
    assert not out.outliers.any()  # the visible token explains the noisy shift
    # without the answer-token features the same neuron would be called a heuristic outlier
    from memlens.tasks.fda_analysis import neuron_features

    feats = neuron_features(ex)
    blind = NeuronTable(acts, [1], [int(ex.answer_pos[0])], ex.is_noisy)  # position with no token
    heur_blind = classify_neurons(blind, ex, features=feats)
    assert heur_blind.is_heuristic.all()
    assert score_outliers(blind, ex, heur_blind, features=feats).outliers.all()


def test_thr_neurons_are_classified_by_slot(thr_tiny):
    _, _, data = thr_tiny
    ex = data.train[data.train.intermediates["n_hops"] == 2]
    acts = (ex.intermediates["bridge_entity"] % 5 == 0).float()[:, None, None, None] * 2
    res = classify_neurons(NeuronTable(acts, [1], [2], ex.is_noisy), ex)
    assert res.best_feature == ["bridge entity"] and res.family == ["entity"] and res.r2[0] > 0.9


def test_heldout_r2_equals_fitting_a_lookup_on_each_half():
    """The sums-only R^2 is the lookup fit on one half, scored on the other, averaged."""
    from memlens.analysis.heuristics import _half, _heldout_r2, lookup

    gen = torch.Generator().manual_seed(3)
    values = torch.randint(0, 12, (400,), generator=gen)
    values[values == 11] = 10
    values[0] = 11  # in one half only: fit on the other, its overall mean stands in
    acts = (values.double()[:, None] * torch.tensor([[0.5, -1.0, 0.0]], dtype=torch.float64)
            + torch.randn(400, 3, generator=gen, dtype=torch.float64))
    halves = _half(400, torch.Generator().manual_seed(0))
    expected = []
    for fit, held in ((halves, ~halves), (~halves, halves)):
        pred = lookup(values[held], values[fit], acts[fit])
        resid = ((acts[held] - pred) ** 2).sum(0)
        total = ((acts[held] - acts[held].mean(0)) ** 2).sum(0)
        expected.append(1 - resid / total)
    torch.testing.assert_close(_heldout_r2(values, acts, halves), torch.stack(expected).mean(0),
                               rtol=0, atol=1e-12)
