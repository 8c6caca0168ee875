"""Counterfactual recipes: every pair changes (or keeps) exactly the intended intermediate, a
changing and a preserving edit touch the same tokens, and patch_intermediate uses them."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memlens.analysis import AnalysisError
from memlens.analysis.counterfactuals import make_counterfactuals, matched_counterfactuals
from memlens.analysis.intermediate_patching import patch_intermediate
from memlens.tasks import FDAConfig, FDATask, THRConfig, THRTask

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(seed=st.integers(0, 10_000), ops=st.integers(2, 4), digits=st.integers(2, 4),
       data=st.data())
def test_fda_recipes_change_or_keep_exactly_the_intended(seed, ops, digits, data):
    task = FDATask(FDAConfig(n_operands=ops, n_digits=digits, n_train=300, n_test=20, noise_rate=0.1))
    ex = task.generate(seed).train
    variable = data.draw(st.sampled_from(["column_sum", "carry"]))
    column = data.draw(st.integers(*{"column_sum": (0, digits - 1), "carry": (1, digits)}[variable]))
    m = matched_counterfactuals(ex, variable, column, seed=seed)  # both kinds verified inside
    assert m.valid.float().mean() > 0.3
    for cf in (m.change, m.preserve):
        assert torch.equal(cf.intermediates["sum"], cf.intermediates["operand"].sum(1))
        # both kinds edit the same two tokens (operands 0 and 1 in one column), nothing else
        diff = (cf.tokens != m.original.tokens).any(0)
        diff[m.original.answer_token_pos] = False
        assert diff.nonzero().flatten().tolist() == m.edited_positions and len(m.edited_positions) == 2
        assert (cf.tokens[:, m.edited_positions] != m.original.tokens[:, m.edited_positions]).all()
    orig, chg, kept = (x.intermediates[variable][:, column] for x in (m.original, m.change, m.preserve))
    assert (chg != orig).all() and (kept == orig).all()
    if variable == "column_sum":  # the preserving edit keeps the true answer
        assert torch.equal(m.preserve.true_labels, m.original.true_labels)
        assert torch.equal(m.change.intermediates["carry"], m.original.intermediates["carry"])


def test_partial_sum_has_a_changing_recipe_only():
    task = FDATask(FDAConfig(n_operands=3, n_digits=3, n_train=300, n_test=20))
    ex = task.generate(0).train
    pairs = make_counterfactuals(ex, "partial_sum", 0)
    assert torch.equal(pairs.counterfactual.intermediates["sum"], pairs.original.intermediates["sum"])
    with pytest.raises(AnalysisError, match="no 'preserve' recipe for partial_sum"):
        make_counterfactuals(ex, "partial_sum", 0, kind="preserve")


@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_thr_bridge_recipes_are_answerable_and_matched(seed):
    task = THRTask(THRConfig(n_entities=40, n_relations=6, relations_per_entity=4, phi=3.0,
                             n_test=50, noise_rate=0.1))
    data = task.generate(seed)
    two_hop = data.train[data.train.intermediates["n_hops"] == 2]
    facts = {}
    inter = data.train.intermediates
    for i in (inter["n_hops"] == 1).nonzero().flatten().tolist():
        facts[(int(inter["head_entity"][i]), int(inter["relation_1"][i]))] = int(inter["answer_entity"][i])
    m = matched_counterfactuals(two_hop, "bridge_entity", seed=seed)
    for cf in (m.change, m.preserve):
        ci = cf.intermediates
        for i in range(len(cf)):
            b = facts[(int(ci["head_entity"][i]), int(ci["relation_1"][i]))]
            assert b == int(ci["bridge_entity"][i])
            assert facts[(b, int(ci["relation_2"][i]))] == int(ci["answer_entity"][i])
        diff = cf.tokens[:, :4] != m.original.tokens[:, :4]
        assert diff[:, 1].all() and not diff[:, [0, 2, 3]].any()  # the head entity only
    bridge = m.original.intermediates["bridge_entity"]
    assert (m.change.intermediates["bridge_entity"] != bridge).all()
    assert (m.preserve.intermediates["bridge_entity"] == bridge).all()
    assert torch.equal(m.preserve.true_labels, m.original.true_labels)


def test_recipes_bad_input(fda_tiny):
    _, _, data = fda_tiny
    ex = data.train[:50]
    with pytest.raises(AnalysisError, match=r"unknown variable 'bridge_entity'.*'column_sum'"):
        make_counterfactuals(ex, "bridge_entity")
    with pytest.raises(AnalysisError, match=r"column=None is invalid for 'carry'"):
        make_counterfactuals(ex, "carry")
    with pytest.raises(AnalysisError, match=r"column=7 is invalid for 'carry'"):
        make_counterfactuals(ex, "carry", 7)
    with pytest.raises(AnalysisError, match=r"no 'change' recipe for carry\[0\]"):
        make_counterfactuals(ex, "carry", 0)
    with pytest.raises(AnalysisError, match="kind='swap' is invalid"):
        make_counterfactuals(ex, "carry", 1, kind="swap")


def test_patch_intermediate_groups_kinds_and_bad_input(fda_tiny):
    task, model, data = fda_tiny
    ex = data.train[:200]
    res = patch_intermediate(model, ex, "column_sum", column=1, layers=[0, 1], positions=[2, 6])
    f = res.to_frame()
    assert set(f["group"]) == {"clean", "noisy"}
    assert len(f) == 2 * 2 * 2
    assert res.baseline["noisy"]["n"] == int(ex.is_noisy.sum())
    # both operands' column-1 digits are edited
    assert res.input_positions == sorted(task.layout.operand_digit_pos(k, 1) for k in (0, 1))
    summary = res.summary()
    assert summary["internal_site"]["layer"] in (0, 1) and summary["internal_site"]["position"] in (2, 6)
    assert 0 <= summary["internal_site_clean_moved_rate"] <= 1
    res.figure()
    kept = patch_intermediate(model, ex, "column_sum", column=1, kind="preserve", layers=[0], positions=[6])
    assert (kept.to_frame()["moved_rate"] == 0).all()  # the answer cannot move when the sum is kept
    with pytest.raises(AnalysisError, match="hook='z' is invalid"):
        patch_intermediate(model, ex, "carry", column=1, hook="z")
    with pytest.raises(AnalysisError, match=r"layer\(s\) \[4\] out of range"):
        patch_intermediate(model, ex, "carry", column=1, layers=[4])


def test_patch_intermediate_refuses_invalid_when_asked(fda_tiny):
    task, model, data = fda_tiny
    ex = data.train[:300]
    # a column whose digits sum to 0 or 18 has no other digits with the same sum
    pairs = make_counterfactuals(ex, "column_sum", 0, kind="preserve")
    assert not pairs.valid.all()
    with pytest.raises(AnalysisError, match="have no counterfactual for column_sum"):
        patch_intermediate(model, ex, "column_sum", column=0, kind="preserve", on_invalid="raise")
    res = patch_intermediate(model, ex, "column_sum", column=0, kind="preserve", layers=[0], positions=[1])
    assert res.n_skipped == int((~pairs.valid).sum())


def test_draws_are_seeded_and_kinds_independent(fda_tiny):
    _, _, data = fda_tiny
    ex = data.train[:100]
    a = make_counterfactuals(ex, "column_sum", 0, seed=3)
    b = make_counterfactuals(ex, "column_sum", 0, seed=3)
    assert torch.equal(a.counterfactual.tokens, b.counterfactual.tokens)
    m = matched_counterfactuals(ex, "column_sum", 0, seed=3)
    rows = np.nonzero(m.valid.numpy())[0]
    # the changing draws do not depend on whether the preserving ones are asked for
    change_rows = torch.cumsum(a.valid.long(), 0)[m.valid] - 1
    assert torch.equal(a.counterfactual.tokens[change_rows], m.change.tokens)
    assert len(rows) == len(m)
