import pytest
import torch

from memlens.analysis import AnalysisError
from memlens.analysis.encoding import concentration, encoding, resample
from memlens.models import ModelConfig, build_model
from memlens.tasks import make_task
from memlens.training.fast_forward import FastForward
from memlens.training.metrics import answer_logits, answer_loss


def fit(model, examples, steps=400, lr=3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    model.train()
    net = FastForward(model)  # the model's parameters, without the (slow) hooked forward
    for _ in range(steps):
        idx = torch.randint(0, len(examples), (128,), generator=gen)
        loss = answer_loss(answer_logits(net, examples.tokens[idx], examples.answer_pos),
                           examples.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def thr_two_hop():
    task = make_task("thr", preset="tiny", noise_rate=0.0)
    ex = task.generate(0).train
    return task, ex[ex.intermediates["n_hops"] == 2]


def test_summary_tells_lookup_from_distributed(thr_two_hop):
    """A model whose label is a lookup from the head entity alone has concentrated attributions;
    a model that composes two hops spreads them over the head and both relations."""
    task, ex = thr_two_hop
    torch.manual_seed(0)
    perm = torch.randperm(task.config.n_entities)
    lookup = ex[:]
    lookup.labels = task.entity_token_id(perm[ex.intermediates["head_entity"]])[:, None]
    lookup.tokens = lookup.tokens.clone()
    lookup.tokens[:, -1] = lookup.labels[:, 0]
    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4)
    lookup_model = fit(build_model(cfg, task, seed=0), lookup)
    composed_model = fit(build_model(cfg, task, seed=0), ex, steps=600)
    res_lookup = encoding(lookup_model, lookup, resamples=2)
    res_composed = encoding(composed_model, ex, resamples=2)
    s_lookup, s_composed = res_lookup.summary()["clean"], res_composed.summary()["clean"]
    print("lookup", s_lookup["mean_largest_share"], s_lookup["mean_entropy"],
          "composed", s_composed["mean_largest_share"], s_composed["mean_entropy"])
    assert s_lookup["mean_largest_share"] > 0.9 and s_lookup["mean_entropy"] < 0.25
    assert s_composed["mean_entropy"] > s_lookup["mean_entropy"] + 0.3
    assert s_composed["mean_largest_share"] < s_lookup["mean_largest_share"] - 0.2
    effects = res_lookup.summary()["clean"]["mean_effect_by_input"]
    assert max(effects, key=effects.get) == "head"


def test_concentration_extremes():
    largest, entropy = concentration(torch.tensor([[5.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    torch.testing.assert_close(largest, torch.tensor([1.0, 1 / 3]))
    torch.testing.assert_close(entropy, torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)


def test_resample_always_changes_the_token():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 13, (500, 6), generator=gen)
    out = resample(tokens, [2, 4], list(range(3, 13)), gen)
    assert (out[:, [2, 4]] != tokens[:, [2, 4]]).all()
    assert torch.equal(out[:, [0, 1, 3, 5]], tokens[:, [0, 1, 3, 5]])
    assert ((out >= 3) & (out < 13)).all()


def test_groups_and_bad_input(fda_tiny):
    task, model, data = fda_tiny
    res = encoding(model, data.train[:60], resamples=1)
    assert res.inputs[0] == "a0.c0" and res.groups == ["operand_0", "operand_1"]
    assert res.effects.shape == (60, 4)
    res.figure()
    with pytest.raises(AnalysisError, match="resamples=0"):
        encoding(model, data.train[:5], resamples=0)
