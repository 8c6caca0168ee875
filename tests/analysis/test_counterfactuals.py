import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memlens.analysis import AnalysisError
from memlens.analysis.counterfactuals import make_counterfactuals
from memlens.analysis.intermediate_patching import patch_intermediate
from memlens.tasks import FDAConfig, FDATask, THRConfig, THRTask

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(seed=st.integers(0, 10_000), ops=st.integers(2, 4), digits=st.integers(2, 4),
       data=st.data())
def test_fda_recipes_change_exactly_the_intended(seed, ops, digits, data):
    task = FDATask(FDAConfig(n_operands=ops, n_digits=digits, n_train=300, n_test=20, noise_rate=0.1))
    ex = task.generate(seed).train
    variable = data.draw(st.sampled_from(["column_sum", "carry"] + (["partial_sum"] if ops > 2 else [])))
    column = data.draw(st.integers(*{"column_sum": (0, digits - 1), "carry": (1, digits),
                                     "partial_sum": (0, ops - 3)}[variable]))
    pairs = make_counterfactuals(ex, variable, column, seed=seed)
    pairs.verify()  # differs in every intended entry, in no other checked one
    assert pairs.valid.float().mean() > 0.3
    # the counterfactual examples are well-formed: true labels equal their operands' sum
    cf = pairs.counterfactual
    assert torch.equal(cf.intermediates["sum"], cf.intermediates["operand"].sum(1))
    if variable == "partial_sum":  # the total stays, so the answer does not change
        assert torch.equal(cf.intermediates["sum"], pairs.original.intermediates["sum"])
    else:
        assert (cf.true_labels != pairs.original.true_labels).any(1).all()


@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_thr_bridge_recipe_is_answerable(seed):
    task = THRTask(THRConfig(n_entities=40, n_relations=6, relations_per_entity=4, phi=3.0,
                             n_test=50, noise_rate=0.1))
    data = task.generate(seed)
    two_hop = data.train[data.train.intermediates["n_hops"] == 2]
    pairs = make_counterfactuals(two_hop, "bridge_entity", seed=seed)
    pairs.verify()
    facts = {}
    inter = data.train.intermediates
    for i in (inter["n_hops"] == 1).nonzero().flatten().tolist():
        facts[(int(inter["head_entity"][i]), int(inter["relation_1"][i]))] = int(inter["answer_entity"][i])
    ci = pairs.counterfactual.intermediates
    for i in range(len(pairs.counterfactual)):
        b = facts[(int(ci["head_entity"][i]), int(ci["relation_1"][i]))]
        assert b == int(ci["bridge_entity"][i])
        assert facts[(b, int(ci["relation_2"][i]))] == int(ci["answer_entity"][i])
    # only the head entity token differs between the inputs
    diff = (pairs.original.tokens[:, :4] != pairs.counterfactual.tokens[:, :4])
    assert diff[:, 1].all() and not diff[:, [0, 2, 3]].any()


def test_patch_intermediate_groups_and_bad_input(fda_tiny):
    task, model, data = fda_tiny
    ex = data.train[:200]
    res = patch_intermediate(model, ex, "column_sum", column=1, layers=[0, 1], positions=[2, 6])
    f = res.to_frame()
    assert set(f["group"]) == {"clean", "noisy"}
    assert len(f) == 2 * 2 * 2
    assert res.baseline["noisy"]["n"] == int(ex.is_noisy.sum())
    # only the last operand's column-1 digit differs between the inputs
    assert res.input_positions == [task.layout.operand_digit_pos(1, 1)]
    summary = res.summary()
    assert summary["internal_site"]["layer"] in (0, 1) and summary["internal_site"]["position"] in (2, 6)
    assert 0 <= summary["internal_site_clean_moved_rate"] <= 1
    res.figure()
    with pytest.raises(AnalysisError, match=r"unknown variable 'bridge_entity'.*'column_sum'"):
        patch_intermediate(model, ex, "bridge_entity")
    with pytest.raises(AnalysisError, match="needs a column in"):
        patch_intermediate(model, ex, "carry")
    with pytest.raises(AnalysisError, match=r"column=7 out of range"):
        patch_intermediate(model, ex, "carry", column=7)
    with pytest.raises(AnalysisError, match="hook='z' is invalid"):
        patch_intermediate(model, ex, "carry", column=1, hook="z")
    with pytest.raises(AnalysisError, match=r"layer\(s\) \[4\] out of range"):
        patch_intermediate(model, ex, "carry", column=1, layers=[4])


def test_patch_intermediate_refuses_invalid_when_asked(fda_tiny):
    task, model, data = fda_tiny
    ex = data.train[:300]
    # carry into the top column flips only for some inputs: some examples have no counterfactual
    pairs = make_counterfactuals(ex, "carry", 2)
    assert not pairs.valid.all()
    with pytest.raises(AnalysisError, match="have no counterfactual for carry"):
        patch_intermediate(model, ex, "carry", column=2, on_invalid="raise")
    res = patch_intermediate(model, ex, "carry", column=2, layers=[0], positions=[1])
    assert res.n_skipped == int((~pairs.valid).sum())
