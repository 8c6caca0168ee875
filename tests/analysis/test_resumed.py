import pytest
import torch

from memlens import backend
from memlens.analysis import AnalysisError
from memlens.analysis.interventions import mean_hook, projection_hook, random_basis
from memlens.analysis.resumed import ResumedRuns
from memlens.training.metrics import with_answer


@pytest.mark.parametrize("layer", [0, 1])
def test_edits_resumed_at_the_layer_equal_whole_runs_with_the_hook(fda_tiny, layer):
    """Runs resumed at the site's layer on positions from the site on (the rest cached) give a
    whole forward pass's answer logits with the same hook, also where some answer slots come
    before the site (those cannot see it)."""
    task, model, data = fda_tiny
    ex = data.splits["train_clean"][:64]
    tokens, answer = with_answer(ex, ex.labels), ex.answer_pos.tolist()
    for position in (task.layout.eq_pos, answer[1]):
        fast = ResumedRuns(model, tokens, answer, layer, position, batch=40)  # two chunks
        slow = ResumedRuns(model, tokens, answer, layer, position, resume=False)
        assert fast.fast == backend.can_resume(model) and not slow.fast  # the 4.x bridge: whole runs
        edits = [None, projection_hook(random_basis(model.cfg.d_model, 5, 0), [position]),
                 mean_hook(torch.randn(model.cfg.d_model), [position])]
        for edit in edits:
            torch.testing.assert_close(fast.logits(edit=edit), slow.logits(edit=edit), atol=1e-4, rtol=1e-4)
        changed = fast.logits(edit=edits[2]) - fast.logits()
        before = [j for j, p in enumerate(answer) if p < position]
        assert changed[:, before].abs().max() == 0 if before else True
        assert changed[:, [j for j, p in enumerate(answer) if p >= position]].abs().max() > 1e-3


@pytest.mark.parametrize("layer,position", [(0, 0), (1, 0), (1, 4)])
def test_hooks_resumed_equal_whole_runs(fda_tiny, layer, position):
    """Hooks given per batch (an MLP neuron set at an absolute position, shifted by the run's
    first position) give the whole run's answer logits; from position 0 there is no cached
    prefix."""
    task, model, data = fda_tiny
    ex = data.splits["train_clean"][:50]
    answer = ex.answer_pos.tolist()
    target = answer[0]  # the absolute position set
    values = torch.randn(len(ex)) * 5

    def hooks(rows, first):
        def hook(act, hook):
            act[:, target - first, 7] = values[rows].to(act.dtype)
            return act
        return [(f"blocks.{layer}.mlp.hook_post", hook)]

    fast = ResumedRuns(model, ex.tokens, answer, layer, position, batch=16)
    slow = ResumedRuns(model, ex.tokens, answer, layer, position, resume=False)
    got = fast.logits(hooks=hooks)
    torch.testing.assert_close(got, slow.logits(hooks=hooks), atol=1e-4, rtol=1e-4)
    assert (got - fast.logits()).abs().max() > 1e-3  # the hook did change the answer logits


def test_another_site_runs_the_whole_model_and_bad_input_is_named(fda_tiny):
    task, model, data = fda_tiny
    ex = data.splits["train_clean"][:8]
    answer = ex.answer_pos.tolist()
    mid = ResumedRuns(model, ex.tokens, answer, 1, 4, site="blocks.1.hook_resid_mid")
    assert not mid.fast
    zero = mid.logits(edit=lambda act, hook: act * 0)
    assert (zero - mid.logits()).abs().max() > 1e-3
    with pytest.raises(AnalysisError, match="layer=2 out of range"):
        ResumedRuns(model, ex.tokens, answer, 2, 4)
    with pytest.raises(AnalysisError, match="position=99 out of range"):
        ResumedRuns(model, ex.tokens, answer, 1, 99)
    with pytest.raises(AnalysisError, match="batch=0 is invalid"):
        ResumedRuns(model, ex.tokens, answer, 1, 4, batch=0)
