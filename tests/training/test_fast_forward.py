"""FastForward computes the HookedTransformer's function from the same parameters."""

import pytest
import torch

from memlens.models import ModelConfig, build_model
from memlens.tasks import make_task
from memlens.training.fast_forward import FastForward, supports


@pytest.fixture(scope="module")
def task_and_tokens():
    task = make_task("fda", preset="tiny")
    return task, task.generate(0).train.tokens[:64]


@pytest.mark.parametrize("norm", ["LN", "LNPre", None])
@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_new", "silu"])
def test_logits_equal_the_hooked_model(task_and_tokens, norm, act):
    task, tokens = task_and_tokens
    model = build_model(ModelConfig(n_layers=2, d_model=48, n_heads=3, act_fn=act,
                                    normalization_type=norm), task, seed=1)
    with torch.no_grad():  # random LayerNorm weights and biases, so that they are exercised
        for name, p in model.named_parameters():
            if name.endswith((".w", ".b", "b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U")):
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith(".w") else 0.0))
    fast = FastForward(model)
    torch.testing.assert_close(fast(tokens), model(tokens), atol=1e-5, rtol=1e-5)


def test_gradients_equal_the_hooked_model(task_and_tokens):
    task, tokens = task_and_tokens
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=4), task, seed=2)
    fast = FastForward(model)
    grads = []
    for forward in (model, fast):
        model.zero_grad()
        forward(tokens)[:, -3:].log_softmax(-1)[..., 0].mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)
    assert list(fast.parameters()) == list(model.parameters())  # shared, not copied


def test_an_unsupported_configuration_is_refused(task_and_tokens):
    task, _ = task_and_tokens
    model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    model.cfg.positional_embedding_type = "rotary"
    assert not supports(model)
    with pytest.raises(ValueError, match="does not cover"):
        FastForward(model)


def test_logits_at_chosen_positions_equal_the_full_run(task_and_tokens):
    """The last layer run at the answer positions alone gives the full run's logits there, and
    the same gradients (the trainer's loss reads only those positions)."""
    task, tokens = task_and_tokens
    model = build_model(ModelConfig(n_layers=3, d_model=32, n_heads=4), task, seed=3)
    fast = FastForward(model)
    positions = task.generate(0).train.answer_pos
    torch.testing.assert_close(fast(tokens, positions=positions), model(tokens)[:, positions],
                               atol=1e-5, rtol=1e-5)
    grads = []
    for forward in (lambda t: model(t)[:, positions], lambda t: fast(t, positions=positions)):
        model.zero_grad()
        forward(tokens).log_softmax(-1)[..., 1].mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_answer_logits_uses_positions_through_wrappers(task_and_tokens):
    from memlens.training.metrics import _is_fast_forward, answer_logits

    task, tokens = task_and_tokens
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=4), task, seed=4)
    fast = FastForward(model)
    wrapped = torch.nn.Module()
    wrapped.module = fast  # the attribute DistributedDataParallel keeps its module under
    assert _is_fast_forward(fast) and _is_fast_forward(wrapped) and not _is_fast_forward(model)
    positions = task.generate(0).train.answer_pos
    torch.testing.assert_close(answer_logits(fast, tokens, positions), answer_logits(model, tokens, positions),
                               atol=1e-5, rtol=1e-5)


def test_fused_attention_gives_the_same_logits(task_and_tokens):
    """The GPU's path (scaled_dot_product_attention), run on the CPU, equals the hooked model."""
    task, tokens = task_and_tokens
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=4), task, seed=5)
    fast = FastForward(model)
    fast.fused_attention = True
    positions = task.generate(0).train.answer_pos
    torch.testing.assert_close(fast(tokens), model(tokens), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast(tokens, positions=positions), model(tokens)[:, positions], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_resumed_suffix_equals_the_full_run(task_and_tokens, fused):
    """Run from layer L at positions p.. with the earlier positions' keys and values: the logits
    equal the full run's there, and with ``queries`` at those suffix positions alone."""
    from memlens import backend

    task, tokens = task_and_tokens
    model = build_model(ModelConfig(n_layers=3, d_model=32, n_heads=4), task, seed=6)
    if not backend.can_resume(model):
        pytest.skip("the suffix engine resumes HookedTransformer runs only (docs/backends.md)")
    fast = FastForward(model)
    fast.fused_attention = fused
    full, cache = model.run_with_cache(tokens)
    answer = task.generate(0).train.answer_pos.tolist()
    for layer in range(3):
        for p in (0, 4, answer[1], tokens.shape[1] - 1):
            keys = [cache[f"blocks.{i}.attn.hook_k"][:, :p] for i in range(layer, 3)]
            values = [cache[f"blocks.{i}.attn.hook_v"][:, :p] for i in range(layer, 3)]
            resid = cache[f"blocks.{layer}.hook_resid_pre"][:, p:]
            torch.testing.assert_close(fast.resume(resid, layer, keys, values), full[:, p:],
                                       atol=1e-5, rtol=1e-5)
            queries = [q - p for q in answer if q >= p]
            if queries:
                got = fast.resume(resid, layer, keys, values, queries)
                torch.testing.assert_close(got, full[:, [p + q for q in queries]], atol=1e-5, rtol=1e-5)
                # The dispatcher: fused without hooks, the model itself (and its hooks) with one.
                torch.testing.assert_close(backend.resume_logits(model, resid, layer, keys, values, queries),
                                           got, atol=1e-5, rtol=1e-5)
    seen = []
    with model.hooks(fwd_hooks=[("blocks.2.hook_resid_pre", lambda act, hook: seen.append(1))]):
        assert backend.has_hooks(model)
        backend.resume_logits(model, resid, 2, keys[-1:], values[-1:], queries)
    assert seen and not backend.has_hooks(model)
    with pytest.raises(backend.BackendError, match=r"queries=\[-1, 2\] are invalid"):
        backend.resume_logits(model, resid, 2, keys[-1:], values[-1:], [-1, 2])


def _resumable(task, tokens, seed: int):
    """A 2-layer model for ``task`` (skipped where runs cannot resume), its FastForward, and
    its whole run's activations on ``tokens``."""
    from memlens import backend

    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=4), task, seed=seed)
    if not backend.can_resume(model):
        pytest.skip("the suffix engine resumes HookedTransformer runs only (docs/backends.md)")
    _, cache = model.run_with_cache(tokens)
    return model, FastForward(model), cache


def test_known_keys_after_a_first_position_patch_give_the_same_logits(task_and_tokens, monkeypatch):
    """A residual stream patched at its first suffix position alone: reusing the layer's
    recorded keys and values (and queries; ``known``, the whole recorded run, the patched
    position's entries stale) gives the logits of the run that computes them, with any queries
    (the first position among them or not, in any order, repeated, counted from the end), with
    either attention kernel, attention rows padded for the softmax or not."""
    from memlens import backend
    from memlens.training import fast_forward

    task, tokens = task_and_tokens
    model, fast, cache = _resumable(task, tokens, seed=7)
    n_pos = tokens.shape[1]
    assert n_pos < fast_forward.SOFTMAX_FAST_WIDTH  # so that the padded rows are exercised
    fast_width = fast_forward.SOFTMAX_FAST_WIDTH
    for fused, pad_width in ((False, fast_forward.SOFTMAX_FAST_WIDTH), (False, 0), (True, 0)):
        fast.fused_attention = fused
        monkeypatch.setattr(fast_forward, "SOFTMAX_FAST_WIDTH", pad_width)
        for layer in range(2):
            for p in (0, 3, n_pos - 2, n_pos - 1):
                keys = [cache[f"blocks.{i}.attn.hook_k"][:, :p] for i in range(layer, 2)]
                values = [cache[f"blocks.{i}.attn.hook_v"][:, :p] for i in range(layer, 2)]
                resid = cache[f"blocks.{layer}.hook_resid_pre"][:, p:].clone()
                resid[:, 0] = resid[:, 0].roll(1, 0)  # another example's activation: a real patch
                known = tuple(cache[f"blocks.{layer}.attn.hook_{kv}"] for kv in "kv")
                with_queries = known + (cache[f"blocks.{layer}.attn.hook_q"],)
                suffix = n_pos - p
                whole = model(resid, start_at_layer=layer, return_type="logits") if p == 0 else \
                    backend.run_suffix(model, resid, layer, keys, values)
                for queries in (None, [0], list(range(suffix)), [suffix - 1, 0], [suffix - 1],
                                [0, suffix - 1, 0], [-1]):
                    want = whole if queries is None else whole[:, queries]
                    got = fast.resume(resid, layer, keys, values, queries, known)
                    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
                    torch.testing.assert_close(fast.resume(resid, layer, keys, values, queries, with_queries),
                                               want, atol=1e-5, rtol=1e-5)
                    torch.testing.assert_close(fast.resume(resid, layer, keys, values, queries), want,
                                               atol=1e-5, rtol=1e-5)
                    if queries != [-1]:  # runs the suffix up to the last query
                        for given in (known, with_queries):
                            torch.testing.assert_close(
                                backend.resume_logits(model, resid, layer, keys, values, queries, given),
                                want, atol=1e-5, rtol=1e-5)
    # The checks below run the CPU kernel, rows padded as by default.
    fast.fused_attention = False
    monkeypatch.setattr(fast_forward, "SOFTMAX_FAST_WIDTH", fast_width)
    # ``known`` from the unpatched run is what makes it right: other keys change the logits.
    resid, keys, values, known = (cache["blocks.1.hook_resid_pre"][:, 3:], [cache["blocks.1.attn.hook_k"][:, :3]],
                                  [cache["blocks.1.attn.hook_v"][:, :3]],
                                  tuple(cache[f"blocks.1.attn.hook_{kv}"] for kv in "kv"))
    assert fast.resume(resid, 1, keys, values, [], known).shape == (len(resid), 0, model.W_U.shape[1])
    n, width = resid.shape[:2]
    wrong = (known[0] + torch.arange(n_pos)[:, None, None] * (torch.arange(n_pos) > 3)[:, None, None], known[1])
    assert not torch.allclose(fast.resume(resid, 1, keys, values, None, wrong),
                              fast.resume(resid, 1, keys, values, None, known), atol=1e-3)
    # Given queries are the ones used: others change the logits at the later positions.
    queries = cache["blocks.1.attn.hook_q"]
    assert not torch.allclose(fast.resume(resid, 1, keys, values, [1, 2], known + (queries + 1,)),
                              fast.resume(resid, 1, keys, values, [1, 2], known + (queries,)), atol=1e-3)
    with pytest.raises(ValueError, match="known holds 1 tensors"):
        fast.resume(resid, 1, keys, values, None, known[:1])
    with pytest.raises(ValueError, match=rf"known queries have \(batch, positions\) \({n}, {n_pos - 1}\): "
                                         rf"expected \({n}, at least {n_pos}\)"):
        fast.resume(resid, 1, keys, values, None, known + (queries[:, :-1],))
    # The stale entries at the patched position itself are not read.
    stale = tuple(kv.clone().index_fill_(1, torch.tensor([3]), 7.0) for kv in known + (queries,))
    torch.testing.assert_close(fast.resume(resid, 1, keys, values, [0, 2], stale),
                               fast.resume(resid, 1, keys, values, [0, 2]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=rf"known values have \(batch, positions\) \({n}, 0\): "
                                         rf"expected \({n}, at least {n_pos}\)"):
        fast.resume(resid, 1, keys, values, None, (known[0], known[1][:, :0]))
    with pytest.raises(ValueError, match=rf"queries=\[{width}\] are out of range for a suffix of {width}"):
        fast.resume(resid, 1, keys, values, [width], known)
    with pytest.raises(backend.BackendError, match=rf"known keys and values cover \[{n_pos}, 0\] positions"):
        backend.resume_logits(model, resid, 1, keys, values, None, (known[0], known[1][:, :0]))


def test_known_keys_of_runs_longer_than_the_softmax_width(monkeypatch):
    """Runs of 22 positions: a patched suffix whose keys fit in the softmax's fast width reads
    the recorded keys up to it (past the suffix's end, masked), a longer one exactly its own;
    both give the run that computes everything."""
    from memlens import backend

    task = make_task("fda", preset="tiny", n_digits=6)
    tokens = task.generate(0).train.tokens[:32]
    model, fast, cache = _resumable(task, tokens, seed=3)
    n_pos = tokens.shape[1]
    assert n_pos > 16
    for layer in range(2):
        for p, end in ((3, 9), (5, n_pos), (17, n_pos)):  # keys: 9 of 16 read, 22 and 22
            keys = [cache[f"blocks.{i}.attn.hook_k"][:, :p] for i in range(layer, 2)]
            values = [cache[f"blocks.{i}.attn.hook_v"][:, :p] for i in range(layer, 2)]
            resid = cache[f"blocks.{layer}.hook_resid_pre"][:, p:end].clone()
            resid[:, 0] = resid[:, 0].roll(1, 0)
            known = tuple(cache[f"blocks.{layer}.attn.hook_{kv}"] for kv in "kvq")
            want = backend.run_suffix(model, resid, layer, keys, values)
            for queries in (None, [0, end - p - 1], [end - p - 1, 1]):
                got = fast.resume(resid, layer, keys, values, queries, known)
                torch.testing.assert_close(got, want if queries is None else want[:, queries],
                                           atol=1e-5, rtol=1e-5)


def test_logits_at_uses_the_fused_forward_only_without_hooks(task_and_tokens):
    from memlens import backend

    task, tokens = task_and_tokens
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=4), task, seed=7)
    positions = task.generate(0).train.answer_pos
    with torch.no_grad():
        want = model(tokens)[:, positions]
    torch.testing.assert_close(backend.logits_at(model, tokens, positions), want, atol=1e-5, rtol=1e-5)
    zero = lambda act, hook: act * 0  # noqa: E731 -- a hook that changes the output
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", zero)]):
        hooked = backend.logits_at(model, tokens, positions)
        torch.testing.assert_close(hooked, model(tokens)[:, positions])
    assert not torch.allclose(hooked, want)


def test_recorded_run_equals_run_with_cache(task_and_tokens):
    """The fused record gives run_with_cache's resid_pre, queries, keys, values and logits
    (whole, at chosen positions, and stopped at a layer; the last layer's queries at every
    position also when its output is computed at chosen positions alone); with a hook attached,
    or a hook name it does not record, the model itself runs."""
    from memlens import backend

    task, tokens = task_and_tokens
    model = build_model(ModelConfig(n_layers=3, d_model=32, n_heads=4), task, seed=8)
    names = {"blocks.0.hook_resid_pre", "blocks.2.hook_resid_pre", "blocks.1.attn.hook_k",
             "blocks.2.attn.hook_v", "blocks.0.hook_resid_post", "blocks.2.hook_resid_post",
             "blocks.0.attn.hook_q", "blocks.2.attn.hook_q"}
    with torch.no_grad():
        full, cache = model.run_with_cache(tokens)
        stopped = model(tokens, stop_at_layer=2)
    positions = task.generate(0).train.answer_pos.tolist()
    for at in (None, positions):
        logits, acts = backend.recorded_run(model, tokens, names, logit_positions=at)
        assert set(acts) == names
        for name in names:
            torch.testing.assert_close(acts[name], cache[name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits, full if at is None else full[:, at], atol=1e-5, rtol=1e-5)
    # Stopped at layer 2: its resid_pre is what the run returns, not a fired hook.
    out, acts = backend.recorded_run(model, tokens, names, stop_at_layer=2)
    assert set(acts) == {"blocks.0.hook_resid_pre", "blocks.1.attn.hook_k", "blocks.0.hook_resid_post",
                         "blocks.0.attn.hook_q"}
    torch.testing.assert_close(out, stopped, atol=1e-5, rtol=1e-5)
    # Not recordable (an MLP hook), or a hook attached: TransformerLens' own run, same values.
    out, acts = backend.recorded_run(model, tokens, {"blocks.1.mlp.hook_post"}, logit_positions=positions)
    torch.testing.assert_close(acts["blocks.1.mlp.hook_post"], cache["blocks.1.mlp.hook_post"])
    torch.testing.assert_close(out, full[:, positions])
    double = lambda act, hook: act * 2  # noqa: E731
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", double)]):
        hooked, acts = backend.recorded_run(model, tokens, names)
        want, want_cache = model.run_with_cache(tokens)
    torch.testing.assert_close(hooked, want)
    torch.testing.assert_close(acts["blocks.2.hook_resid_pre"], want_cache["blocks.2.hook_resid_pre"])
    assert not torch.allclose(hooked, full)


def test_recorded_run_after_a_prefix_equals_the_whole_run(task_and_tokens):
    """Given the keys and values of the first ``b`` positions, the record of the remaining
    tokens is the whole run's at positions ``b..`` (residual streams, keys, values, logits;
    stopped at a layer too); a hooked model or logit positions are refused by name."""
    from memlens import backend

    task, tokens = task_and_tokens
    model = build_model(ModelConfig(n_layers=3, d_model=32, n_heads=4), task, seed=9)
    names = {f"blocks.{i}.{h}" for i in range(3) for h in ("hook_resid_pre", "attn.hook_k", "attn.hook_v")}
    if not backend.records_fused(model, names):
        pytest.skip("the fused record stands in for HookedTransformer runs only (docs/backends.md)")
    with torch.no_grad():
        full, cache = model.run_with_cache(tokens)
    for b in (1, 4, tokens.shape[1] - 1):
        prefix = ([cache[f"blocks.{i}.attn.hook_k"][:, :b] for i in range(3)],
                  [cache[f"blocks.{i}.attn.hook_v"][:, :b] for i in range(3)])
        logits, acts = backend.recorded_run(model, tokens[:, b:], names, prefix=prefix)
        torch.testing.assert_close(logits, full[:, b:], atol=1e-5, rtol=1e-5)
        for name in names:
            torch.testing.assert_close(acts[name], cache[name][:, b:], atol=1e-5, rtol=1e-5)
        out, acts = backend.recorded_run(model, tokens[:, b:], {"blocks.1.hook_resid_pre"}, stop_at_layer=2,
                                         return_logits=False, prefix=prefix)
        torch.testing.assert_close(out, cache["blocks.2.hook_resid_pre"][:, b:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(acts["blocks.1.hook_resid_pre"], cache["blocks.1.hook_resid_pre"][:, b:],
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(backend.BackendError, match="prefix needs the fused record"):
        backend.recorded_run(model, tokens[:, b:], names, logit_positions=[0], prefix=prefix)
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda act, hook: act)]):
        with pytest.raises(backend.BackendError, match="prefix needs the fused record"):
            backend.recorded_run(model, tokens[:, b:], names, prefix=prefix)
    with pytest.raises(ValueError, match="prefix holds keys and values of 1 and 1 layers: expected 3"):
        FastForward(model).record(tokens[:, b:], prefix=([prefix[0][0]], [prefix[1][0]]))
    with pytest.raises(ValueError, match=rf"\(batch, positions\) \[\(1, {b}\), \({len(tokens)}, {b}\)\]"):
        FastForward(model).record(tokens[:, b:], prefix=([prefix[0][0][:1]] + prefix[0][1:], prefix[1]))


def test_cached_activations_stop_early_and_equal_run_with_cache(task_and_tokens):
    from memlens.analysis.common import cached_activations, stop_layer

    task, tokens = task_and_tokens
    model = build_model(ModelConfig(n_layers=3, d_model=32, n_heads=4), task, seed=9)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    for names in (["blocks.1.hook_resid_pre"], ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z"],
                  ["blocks.2.hook_resid_post", "blocks.0.hook_resid_pre"], ["blocks.1.mlp.hook_post"]):
        got = cached_activations(model, tokens, names, positions=[2, 5], chunk_size=40)
        for name in names:
            torch.testing.assert_close(got[name], cache[name][:, [2, 5]], atol=1e-5, rtol=1e-5)
    assert stop_layer(["blocks.1.hook_resid_pre"], 3) == 1
    assert stop_layer(["blocks.1.mlp.hook_post"], 3) == 2
    assert stop_layer(["hook_embed", "blocks.0.hook_resid_pre"], 3) == 1
    assert stop_layer(["blocks.2.hook_resid_pre", "ln_final.hook_normalized"], 3) is None
