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
        # Edits of the site's position alone reuse the layer's recorded keys after it; an edit
        # of later positions too does not (and still equals the whole run).
        seen = []
        resume_logits = backend.resume_logits

        def spy(*args, **kwargs):
            seen.append(args[6] if len(args) > 6 else kwargs.get("known"))
            return resume_logits(*args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(backend, "resume_logits", spy)
            fast.logits(edit=edits[1])
            assert seen and all(known is not None for known in seen) or not fast.fast
            seen.clear()
            spread = mean_hook(torch.randn(model.cfg.d_model), [position, answer[-1]])
            torch.testing.assert_close(fast.logits(edit=spread), slow.logits(edit=spread), atol=1e-4, rtol=1e-4)
            assert all(known is None for known in seen)
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
    with pytest.raises(AnalysisError, match=r"layer\(s\) \[2\] out of range"):
        ResumedRuns(model, ex.tokens, answer, 2, 4)
    with pytest.raises(AnalysisError, match=r"position\(s\) \[99\] out of range"):
        ResumedRuns(model, ex.tokens, answer, 1, 99)
    with pytest.raises(AnalysisError, match="batch=0 is invalid"):
        ResumedRuns(model, ex.tokens, answer, 1, 4, batch=0)


def test_edit_and_hooks_together_in_place_edits_and_slots_out_of_reach(fda_tiny):
    """An edit with hooks equals the whole run; an in-place edit returning None works and leaves
    the recorded run as it was; a site after every answer slot changes no logit."""
    task, model, data = fda_tiny
    ex = data.splits["train_clean"][:40]
    answer = ex.answer_pos.tolist()
    position = answer[0]

    def hooks(rows, first):
        def hook(act, hook):
            act[:, answer[-1] - first, 3] = 4.0
            return act
        return [("blocks.1.mlp.hook_post", hook)]

    def scale_in_place(act, hook):
        act[:, position:] *= 0.5  # TransformerLens' in-place style: returns None

    fast = ResumedRuns(model, ex.tokens, answer, 0, position, batch=16)
    slow = ResumedRuns(model, ex.tokens, answer, 0, position, resume=False)
    clean = fast.logits()
    torch.testing.assert_close(fast.logits(edit=scale_in_place, hooks=hooks),
                               slow.logits(edit=scale_in_place, hooks=hooks), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.logits(edit=scale_in_place), slow.logits(edit=scale_in_place),
                               atol=1e-4, rtol=1e-4)
    assert (fast.logits(edit=scale_in_place) - clean).abs().max() > 1e-3
    assert torch.equal(fast.logits(), clean)  # the recorded run is untouched
    last = ex.tokens.shape[1] - 1  # after the last answer-predicting position
    late = ResumedRuns(model, ex.tokens, answer, 0, last)

    def zero_last(act, hook):  # within the contract: positions from the site on only
        act[:, last:] = 0
        return act
    assert late.slots == []
    torch.testing.assert_close(late.logits(edit=zero_last), late.logits(), atol=1e-5, rtol=0)


def test_nothing_to_run_is_named(fda_tiny):
    task, model, data = fda_tiny
    ex = data.splits["train_clean"][:8]
    with pytest.raises(AnalysisError, match="nothing to run: 0 examples"):
        ResumedRuns(model, ex.tokens[:0], ex.answer_pos.tolist(), 1, 4)
    with pytest.raises(AnalysisError, match=r"answer positions \[\]"):
        ResumedRuns(model, ex.tokens, [], 1, 4)


def test_intervene_resumed_equals_whole_runs(fda_tiny):
    """The whole intervention table (INLP, its controls, mean ablation) is the same whether the
    runs resume at the site or run the whole model."""
    from memlens.analysis.interventions import intervene

    task, model, data = fda_tiny
    s = data.splits
    groups = {"train_clean": s["train_clean"][:100], "train_noisy": s["train_noisy"][:40], "test": s["test"][:100]}
    kwargs = dict(layer=1, position=task.layout.eq_pos, column=0, max_iterations=2, random_draws=2)
    fast = intervene(model, groups, s["train_clean"][:300], "column_sum", **kwargs)
    slow = intervene(model, groups, s["train_clean"][:300], "column_sum", resume=False, **kwargs)
    assert fast.frame.equals(slow.frame) and fast.examples == slow.examples
    assert fast.frame["intervention"].tolist()[:3] == ["none", "mean_ablation", "inlp"]
