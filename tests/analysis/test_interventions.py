import pytest
import torch

from memlens.analysis import AnalysisError
from memlens.analysis.interventions import inlp_basis, intervene, random_basis


def test_inlp_removes_the_probed_information(fda_tiny):
    task, model, data = fda_tiny
    fit = data.splits["train_clean"][:800]
    pos = task.layout.eq_pos
    basis, accs = inlp_basis(model, fit, "column_sum", layer=1, position=pos, column=0, iterations=3)
    assert basis.shape[0] == model.cfg.d_model and basis.shape[1] >= 1
    torch.testing.assert_close(basis.T @ basis, torch.eye(basis.shape[1]), atol=1e-4, rtol=0)
    assert accs[-1] < accs[0]  # each iteration leaves less to read


def test_inlp_stops_once_the_probe_reads_the_majority(fda_tiny):
    task, model, data = fda_tiny
    fit = data.splits["train_clean"][:800]
    pos = task.layout.eq_pos
    _, accs = inlp_basis(model, fit, "column_sum", layer=1, position=pos, column=0, iterations=10,
                         target_accuracy=1.0)
    assert len(accs) == 1  # already at the target: nothing is removed
    basis, accs = inlp_basis(model, fit, "column_sum", layer=1, position=pos, column=0, iterations=2,
                             target_accuracy=0.0)
    assert len(accs) == 3 and basis.shape[1] >= 1  # never reached: every iteration runs


def test_inlp_that_takes_every_direction_stops_at_the_majority(fda_tiny):
    """Never reaching the target, INLP removes 16 directions per iteration until none of the 32
    is left, then records the majority accuracy (a constant reads nothing) and stops: no probe
    may read the rounding residue of a projection that removed everything."""
    from memlens.analysis.interventions import majority_accuracy

    task, model, data = fda_tiny
    fit = data.splits["train_clean"][:400]
    basis, accs = inlp_basis(model, fit, "column_sum", layer=1, position=task.layout.eq_pos, column=0,
                             iterations=10, rank_per_iteration=16, target_accuracy=-1.0)
    assert basis.shape == (32, 32)
    assert len(accs) == 3 and accs[0] > accs[-1]
    assert accs[-1] == majority_accuracy(fit, "column_sum", 0)


def test_random_basis_orthonormal():
    q = random_basis(16, 5, seed=1)
    torch.testing.assert_close(q.T @ q, torch.eye(5), atol=1e-5, rtol=0)
    assert not torch.equal(q, random_basis(16, 5, seed=2))


def test_intervene_table_and_no_op(fda_tiny):
    task, model, data = fda_tiny
    s = data.splits
    res = intervene(model, s, s["train_clean"][:400], "column_sum", column=1, layer=1,
                    position=task.layout.eq_pos, max_iterations=2, random_draws=3)
    f = res.to_frame().set_index("intervention")
    assert list(f.index) == ["none", "mean_ablation", "inlp", "random_subspace", "shuffled_inlp"]
    assert f.loc["inlp", "rank"] == f.loc["random_subspace", "rank"] == f.loc["shuffled_inlp", "rank"] >= 1
    assert f.loc["random_subspace", "draws"] == 3
    settings = res.summary()["settings"]
    accs = settings["inlp_probe_accuracy_before_each_iteration_and_after"]
    assert settings["removed"] == (accs[-1] <= settings["majority"] + settings["tolerance"])
    assert len(res.summary()["examples"]["inlp"]) == len(s["train_noisy"])
    for col in ("noisy_memorized_acc", "train_clean_acc", "test_acc"):
        assert 0 <= f.loc["none", col] <= 1
    res.figure()
    # no hook remains afterwards: the model's output is unchanged
    with torch.no_grad():
        before = model(s["test"].tokens[:8])
    assert all(len(h.fwd_hooks) == 0 for h in model.hook_dict.values())
    torch.testing.assert_close(model(s["test"].tokens[:8]), before)


def test_bad_input(fda_tiny):
    task, model, data = fda_tiny
    fit = data.splits["train_clean"][:100]
    with pytest.raises(AnalysisError, match="layer=5 out of range"):
        inlp_basis(model, fit, "column_sum", layer=5, position=1)
    with pytest.raises(AnalysisError, match="no column 9"):
        inlp_basis(model, fit, "column_sum", layer=0, position=1, column=9)
    with pytest.raises(AnalysisError, match="point='end'"):
        inlp_basis(model, fit, "column_sum", layer=0, position=1, point="end")
    with pytest.raises(AnalysisError, match=r"activations of shape \(100, 5\)"):
        inlp_basis(model, fit, "column_sum", layer=0, position=1, activations=torch.zeros(100, 5))
    from memlens.analysis.interventions import site_activations

    with pytest.raises(AnalysisError, match="position=99 out of range"):
        site_activations(model, fit, 0, "pre", 99)
    with pytest.raises(AnalysisError, match="layer=-1 out of range"):
        site_activations(model, fit, -1, "pre", 1)
    assert tuple(site_activations(model, fit, 1, "pre", 4).shape) == (100, model.cfg.d_model)
