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
    assert res.best_feature[:3] == ["sum range", "sum mod 7", "carry into column 2"]
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
    assert out.neuron_score[1] > 10 and out.neuron_score[0] < 1.5
    assert out.summary()["share_heuristic"] == 1.0


def test_bad_input(fda_small_data, thr_tiny):
    ex = fda_small_data
    with pytest.raises(AnalysisError, match="150 clean examples are too few.*at least 200"):
        few = ex[~ex.is_noisy][:150]
        classify_neurons(NeuronTable(planted(few), [1], [10], few.is_noisy), few)
    with pytest.raises(AnalysisError, match="the table has 10 examples but 20"):
        classify_neurons(NeuronTable(planted(ex[:10]), [1], [10], ex.is_noisy[:10]), ex[:20])
    _, _, thr = thr_tiny
    t = thr.train[:300]
    t.intermediates.pop("bridge_entity")  # neither FDA nor THR: no features to test
    with pytest.raises(AnalysisError, match="need the FDA intermediates"):
        classify_neurons(NeuronTable(torch.zeros(300, 1, 1, 2), [0], [3], t.is_noisy), t)


def test_thr_neurons_are_classified_by_slot(thr_tiny):
    _, _, data = thr_tiny
    ex = data.train[data.train.intermediates["n_hops"] == 2]
    acts = (ex.intermediates["bridge_entity"] % 5 == 0).float()[:, None, None, None] * 2
    res = classify_neurons(NeuronTable(acts, [1], [2], ex.is_noisy), ex)
    assert res.best_feature == ["bridge entity"] and res.family == ["entity"] and res.r2[0] > 0.9
