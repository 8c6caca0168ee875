"""memlens.backend: one checkpoint layout, split hooks and suffix runs on either TL version."""

import pytest
import torch

from memlens import backend
from memlens.analysis import patch_grid
from memlens.models import ModelConfig, build_model
from memlens.split_view import SplitView
from memlens.tasks import make_task
from tests.analysis.helpers import label_logprob_metric

hooked_only = pytest.mark.skipif(backend.BACKEND != "hooked",
                                 reason="compares with HookedTransformer (TransformerLens 3.x)")
bridge_only = pytest.mark.skipif(backend.BACKEND != "bridge",
                                 reason="TransformerBridge behaviour (TransformerLens 4.x)")


@pytest.fixture(scope="module")
def setup():
    task = make_task("fda", preset="tiny")
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # no zero biases: a misplaced bias would go unseen
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return task, model, task.generate(0).test[:8]


def test_layout_is_hooked_transformers(setup):
    _, model, _ = setup
    shapes = {k: tuple(v.shape) for k, v in backend.state_dict(model).items()}
    assert shapes["blocks.0.attn.W_Q"] == (2, 32, 16)
    assert shapes["blocks.1.attn.b_K"] == (2, 16)
    assert shapes["blocks.0.attn.W_O"] == (2, 16, 32)
    assert shapes["blocks.0.mlp.W_in"] == (32, 128)
    assert shapes["unembed.W_U"] == (32, 15) and shapes["unembed.b_U"] == (15,)
    assert shapes["embed.W_E"] == (15, 32) and shapes["ln_final.w"] == (32,)
    assert len(shapes) == len(list(model.parameters()))


def test_layout_round_trip_gives_the_same_function(setup):
    task, model, ex = setup
    other = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=5).eval()
    with torch.no_grad():
        assert not torch.allclose(other(ex.tokens), model(ex.tokens))
        # HookedTransformer's attention buffers, present in checkpoints of earlier memlens, are ignored
        backend.load_state_dict(other, {**backend.state_dict(model), "blocks.0.attn.IGNORE": torch.tensor(0.0),
                                        "blocks.0.attn.mask": torch.zeros(0, 0)})
        torch.testing.assert_close(other(ex.tokens), model(ex.tokens), atol=0, rtol=0)


@pytest.mark.parametrize("change,named", [
    (lambda sd: sd.pop("blocks.1.mlp.b_out"), "blocks.1.mlp.b_out"),
    (lambda sd: sd.__setitem__("blocks.0.attn.W_Q", torch.zeros(4, 32, 8)), "blocks.0.attn.W_Q"),
    (lambda sd: sd.__setitem__("blocks.0.attn.W_X", torch.zeros(1)), "blocks.0.attn.W_X"),
])
def test_bad_checkpoint_is_refused_by_name(setup, change, named):
    _, model, _ = setup
    tensors = backend.state_dict(model)
    change(tensors)
    with pytest.raises(backend.BackendError, match=named.replace(".", r"\.")):
        backend.load_state_dict(model, tensors)


def test_weight_views_carry_gradients(setup):
    _, model, ex = setup
    view = backend.canonical_params(model)["blocks.0.attn.W_Q"]
    view.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == 1 and grads[0].abs().sum() == view.numel()
    model.zero_grad(set_to_none=True)


def test_whole_sequence_patching_equals_suffix_runs(setup, monkeypatch):
    """The bridge's patching path, checked where both paths run (3.9) and equal to itself on 4.x."""
    _, model, ex = setup
    clean, corrupt = ex.tokens, ex.tokens.roll(1, 0)
    metric = label_logprob_metric(ex)
    for kind, comps in (("resid_pre", None), ("z", None), ("mlp_post", [0, 5, 77, 127])):
        grid = dict(hook=kind, layers=[0, 1], positions=[3, 7], components=comps)
        want = patch_grid(model, clean, corrupt, metric, **grid)
        monkeypatch.setattr(backend, "can_resume", lambda m: False)
        got = patch_grid(model, clean, corrupt, metric, chunk_size=5, **grid)
        monkeypatch.undo()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@hooked_only
def test_split_view_equals_hooked_transformer_split_hooks(setup):
    _, model, ex = setup
    names = ["hook_embed", "hook_pos_embed"] + [
        f"blocks.{i}.{h}" for i in range(2) for h in
        ("hook_q_input", "hook_k_input", "hook_v_input", "attn.hook_result", "hook_mlp_in",
         "hook_mlp_out", "hook_resid_post", "hook_resid_mid", "hook_attn_out")]

    def grads(net):
        store = {}

        def keep(act, hook):
            act.retain_grad()
            store[hook.name] = act
            return act

        with net.hooks(fwd_hooks=[(n, keep) for n in names]):
            net(ex.tokens)[:, -1].log_softmax(-1)[:, 3].sum().backward()
        model.zero_grad(set_to_none=True)
        return store

    with backend.split_hooks(model) as net:
        assert net is model
        want = grads(net)
    got = grads(SplitView(model))
    for n in names:
        torch.testing.assert_close(got[n], want[n], atol=1e-5, rtol=0, msg=n)
        torch.testing.assert_close(got[n].grad, want[n].grad, atol=1e-5, rtol=0, msg=n)


@bridge_only
def test_bridge_refuses_per_head_hooks_so_memlens_brings_its_own(setup):
    _, model, ex = setup
    with pytest.raises(NotImplementedError):
        model.set_use_split_qkv_input(True)
    with backend.split_hooks(model) as net:
        assert isinstance(net, SplitView)
    assert not backend.can_resume(model)
    with pytest.raises(backend.BackendError, match="cannot resume"):
        backend.run_suffix(model, torch.zeros(1, 2, 32), 1, [torch.zeros(1, 1, 2, 16)], [torch.zeros(1, 1, 2, 16)])


@bridge_only
def test_bridge_trains_the_unembedding_bias_as_hooked_transformer_does(setup):
    _, model, _ = setup
    bias = model.unembed.original_component.bias
    assert isinstance(bias, torch.nn.Parameter) and bias.requires_grad
    assert any(p is bias for p in model.parameters())
