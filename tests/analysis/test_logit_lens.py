import pytest
import torch

from memlens.analysis import AnalysisError, logit_lens
from memlens.training.metrics import answer_logits


@pytest.mark.parametrize("which", ["fda_tiny", "thr_tiny"])
def test_last_point_equals_model_output(request, which):
    task, model, data = request.getfixturevalue(which)
    groups = data.splits
    res = logit_lens(model, groups)
    for group, ex in groups.items():
        with torch.no_grad():
            probs = answer_logits(model, ex.tokens, ex.answer_pos).softmax(-1)
        want = probs.gather(-1, ex.true_labels[..., None])[..., 0]
        got = res.prob[group][:, -1, :, res.targets.index("true")]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        # ranks: 0 exactly where the model's argmax is the true label
        argmax_hit = probs.argmax(-1) == ex.true_labels
        assert torch.equal(res.rank[group][:, -1, :, 0] == 0, argmax_hit)


def test_groups_and_targets(thr_tiny):
    task, model, data = thr_tiny
    res = logit_lens(model, data.train)  # one Examples is split by its noise flags
    assert set(res.prob) == {"train_clean", "train_noisy"}
    assert len(res.prob["train_noisy"]) == int(data.train.is_noisy.sum())
    assert res.targets == ["true", "noisy", "bridge"]
    # the noisy target exists only on noisy examples
    assert torch.isnan(res.prob["train_clean"][..., 1]).all()
    assert not torch.isnan(res.prob["train_noisy"][..., 1]).any()
    frame = res.to_frame()
    assert set(frame["group"]) == {"train_clean", "train_noisy"}
    assert len(res.points) == 2 * model.cfg.n_layers + 1
    assert "noisy_label_wins_from_point" in res.summary()
    res.figure()


def test_bad_input(fda_tiny, thr_tiny):
    _, fda_model, fda_data = fda_tiny
    _, _, thr_data = thr_tiny
    with pytest.raises(AnalysisError, match="'thr' examples but the model was built for the 'fda'"):
        logit_lens(fda_model, {"x": thr_data.test})
    with pytest.raises(AnalysisError, match="group 'empty' is empty"):
        logit_lens(fda_model, {"empty": fda_data.test[:0]})
