import pytest
import torch

from memlens.analysis import AnalysisError, fit_probes
from memlens.analysis.probes import fit_softmax_probes, predict_probes


def test_planted_feature_recovered_and_shuffled_control_at_chance():
    gen = torch.Generator().manual_seed(0)
    n, k, d, classes = 1200, 3, 16, 5
    labels = torch.randint(0, classes, (n,), generator=gen)
    directions = torch.randn(classes, d, generator=gen)
    x = torch.randn(n, k, d, generator=gen)
    x[:, 1] += 3 * directions[labels]  # the feature is planted in probe slot 1 only
    mean, std = x[:800].mean(0), x[:800].std(0)
    x = (x - mean) / std
    w, b = fit_softmax_probes(x[:800], labels[:800, None], [classes])
    acc = (predict_probes(x[800:], w, b, [classes])[..., 0] == labels[800:, None]).float().mean(0)
    assert acc[1] >= 0.99
    assert acc[0] < 0.35 and acc[2] < 0.35  # pure noise slots: chance is 0.2
    shuffled = labels[:800][torch.randperm(800, generator=gen)]
    w, b = fit_softmax_probes(x[:800], shuffled[:, None], [classes])
    acc_shuf = (predict_probes(x[800:], w, b, [classes])[..., 0] == labels[800:, None]).float().mean(0)
    assert acc_shuf[1] < 0.35


def test_probe_frame_on_model(fda_tiny):
    task, model, data = fda_tiny
    s = data.splits
    res = fit_probes(model, s["train_clean"][:400], {"clean_heldout": s["train_clean"][400:700],
                     "noisy": s["train_noisy"]}, ["carry", "column_sum"], positions=[3, 7],
                     max_iter=30)
    f = res.to_frame()
    assert set(f["group"]) == {"clean_heldout", "noisy"}
    assert set(f["position"]) == {3, 7}
    assert set(f["target"]) >= {"carry[1]", "column_sum[0]"}
    assert ((f["accuracy"] >= 0) & (f["accuracy"] <= 1)).all()
    # carry[0] is always 0: the majority baseline is exact and the probe learns it
    c0 = f[f["target"] == "carry[0]"]
    assert (c0["majority"] == 1.0).all() and (c0["accuracy"] == 1.0).all()
    best = res.best()
    assert set(best["target"]) == set(f["target"])
    res.figure("carry[1]")
    with pytest.raises(AnalysisError, match=r"select_group 'clean'.*\['clean_heldout', 'noisy'\]"):
        res.best("clean")


def test_bad_input(fda_tiny, thr_tiny):
    _, model, data = fda_tiny
    s = data.splits
    with pytest.raises(AnalysisError, match=r"unknown intermediate 'bridge'.*'carry'"):
        fit_probes(model, s["train_clean"], {"n": s["train_noisy"]}, "bridge")
    with pytest.raises(AnalysisError, match=r"position\(s\) \[99\] out of range"):
        fit_probes(model, s["train_clean"], {"n": s["train_noisy"]}, "carry", positions=[99])
    with pytest.raises(AnalysisError, match="'thr' examples"):
        fit_probes(model, thr_tiny[2].train, {"n": s["train_noisy"]}, "carry")
