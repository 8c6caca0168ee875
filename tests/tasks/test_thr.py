import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memlens.config import ConfigError
from memlens.tasks import THRConfig, THRTask

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def thr_configs(draw):
    R = draw(st.integers(1, 8))
    K = draw(st.integers(1, R))
    E = draw(st.integers(3, 40))
    n_test = draw(st.integers(1, max(1, E * K * K // 4)))
    max_phi = (E * K * K - n_test) / (E * K)
    phi = draw(st.floats(0.05, max(0.05, max_phi)))
    rate = draw(st.sampled_from([0.0, 0.05, 0.5]))
    return THRConfig(n_entities=E, n_relations=R, relations_per_entity=K, phi=phi,
                     n_test=n_test, noise_rate=rate)


def _graph(task, train):
    """The atomic facts in training as a dict (entity, relation) -> tail."""
    inter = train.intermediates
    atomic = inter["n_hops"] == 1
    keys = zip(inter["head_entity"][atomic].tolist(), inter["relation_1"][atomic].tolist())
    return dict(zip(keys, inter["answer_entity"][atomic].tolist()))


@SETTINGS
@given(cfg=thr_configs(), seed=st.integers(0, 2**31))
def test_thr_answers_bridges_and_noise(cfg, seed):
    task = THRTask(cfg)
    data = task.generate(seed)
    train, test = data.train, data.test
    facts = _graph(task, train)
    assert len(facts) == cfg.n_atomic  # every atomic fact is in training, once
    for ex in (train, test):
        inter = ex.intermediates
        two_hop = (inter["n_hops"] == 2).nonzero().flatten().tolist()
        for i in two_hop:
            e, r1, r2 = (int(inter[k][i]) for k in ("head_entity", "relation_1", "relation_2"))
            # every two-hop query's atomic facts are in training, and the answer is r2(r1(e))
            bridge = facts[(e, r1)]
            assert bridge == int(inter["bridge_entity"][i])
            assert facts[(bridge, r2)] == int(inter["answer_entity"][i])
        true_tok = task.entity_token_id(inter["answer_entity"])
        assert torch.equal(ex.true_labels[:, 0], true_tok)
    assert (test.intermediates["n_hops"] == 2).all()
    # noise: exact count, on two-hop training queries only, differs from true answer and bridge
    noisy = train.is_noisy
    assert int(noisy.sum()) == int(round(cfg.noise_rate * cfg.n_inferred_train))
    assert (train.intermediates["n_hops"][noisy] == 2).all()
    assert (train.labels[noisy] != train.true_labels[noisy]).all()
    bridge_tok = task.entity_token_id(train.intermediates["bridge_entity"][noisy])
    assert (train.labels[noisy, 0] != bridge_tok).all()
    assert torch.equal(train.labels[~noisy], train.true_labels[~noisy])
    # train and test queries are disjoint; sizes follow phi
    query = slice(1, 4)
    train_q = {tuple(r) for r in train.tokens[:, query].tolist()}
    assert not train_q & {tuple(r) for r in test.tokens[:, query].tolist()}
    assert len(train) == cfg.n_atomic + cfg.n_inferred_train == len(train_q)


@SETTINGS
@given(seed=st.integers(0, 2**31))
def test_same_seed_same_hash(seed):
    cfg = THRConfig(n_entities=20, n_relations=4, relations_per_entity=3, phi=2.0, n_test=20)
    a, b, c = (THRTask(cfg).generate(s) for s in (seed, seed, seed + 1))
    assert a.content_hash == b.content_hash != c.content_hash


@pytest.mark.parametrize("kwargs,needle", [
    (dict(relations_per_entity=30, n_relations=20), "relations_per_entity=30"),
    (dict(phi=19.6), r"phi=19.6 is invalid: expected at most 19.500"),
    (dict(phi=0.0), "phi=0.0"),
    (dict(noise_rate=1.5), "noise_rate=1.5"),
    (dict(n_entities=2), "n_entities=2"),
    (dict(noise_mode="digit"), "noise_mode='digit'"),
])
def test_bad_config(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        THRConfig(**kwargs)
