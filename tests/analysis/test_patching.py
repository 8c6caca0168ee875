from functools import partial

import pytest
from jaxtyping import TypeCheckError
import torch
from transformer_lens import patching as tl_patching

from memlens import backend
from memlens.analysis import AnalysisError
from memlens.analysis.patching import hook_name, patch_grid, run_with_patch
from tests.analysis.helpers import label_logprob_metric



@pytest.fixture(scope="module")
def pair(fda_tiny):
    task, model, data = fda_tiny
    clean = data.test[:16]
    corrupted = data.test[16:32]
    return model, clean, corrupted


@pytest.mark.parametrize("layer", [0, 1])
def test_full_residual_patch_restores_clean_logits(pair, layer):
    model, clean, corrupted = pair
    with torch.no_grad():
        want = model(clean.tokens)
    got = run_with_patch(model, clean.tokens, corrupted.tokens, hook="resid_pre", layer=layer)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_identical_source_changes_nothing(pair):
    model, clean, _ = pair
    metric = label_logprob_metric(clean)
    with torch.no_grad():
        base = metric(model(clean.tokens))
    out = patch_grid(model, clean.tokens, clean.tokens, metric)
    torch.testing.assert_close(out, base.expand_as(out), atol=1e-6, rtol=0)


resid_post_tl = partial(tl_patching.generic_activation_patch,
                        patch_setter=tl_patching.layer_pos_patch_setter,
                        activation_name="resid_post", index_axis_names=("layer", "pos"))


def patched_and_tl(model, clean, corrupted_tokens, kind, tl_fn, chunk_size):
    """memlens' patch_grid and TransformerLens' patching function on the same inputs and metric,
    asserted equal to 1e-5; returns (memlens grid, metric)."""
    metric = label_logprob_metric(clean)
    _, cache = model.run_with_cache(clean.tokens)
    # Without gradients TransformerLens patches in place, as memlens does. With them, TL 4's
    # patching clones the activation first, and on the bridge, whose hook_resid_mid is an alias
    # of ln2.hook_in, a cloned resid_mid patch reaches the MLP input only, not the residual
    # stream (docs/backends.md); in place it is TL 3.9's residual patch.
    with torch.no_grad():
        want = tl_fn(model, corrupted_tokens, cache, metric)
    got = patch_grid(model, clean.tokens, corrupted_tokens, metric, hook=kind, chunk_size=chunk_size)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.cpu(), atol=1e-5, rtol=0)
    return got, metric


@pytest.mark.parametrize("kind,tl_fn", [
    ("resid_pre", tl_patching.get_act_patch_resid_pre),
    ("resid_mid", tl_patching.get_act_patch_resid_mid),
    ("resid_post", resid_post_tl),
    ("mlp_out", tl_patching.get_act_patch_mlp_out),
    ("attn_out", tl_patching.get_act_patch_attn_out),
    ("z", tl_patching.get_act_patch_attn_head_out_by_pos),
])
def test_equals_transformer_lens(pair, kind, tl_fn):
    model, clean, corrupted = pair
    patched_and_tl(model, clean, corrupted.tokens, kind, tl_fn, chunk_size=64)


@pytest.fixture(scope="module")
def near_pair(fda_tiny):
    """Corrupted inputs that differ from the clean ones in one digit, for half the examples
    only: most (layer, position) points then have equal activations in many examples."""
    task, model, data = fda_tiny
    clean = data.test[:16]
    corrupted = clean.tokens.clone()
    digit_pos = task.layout.operand_digit_pos(1, 0)
    digits = [task.tokenizer.token_to_id(str(d)) for d in range(10)]
    corrupted[::2, digit_pos] = torch.tensor(digits)[(torch.arange(8) + 3) % 10]
    assert (corrupted != clean.tokens).any(1).sum() >= 6
    return model, clean, corrupted


@pytest.mark.parametrize("kind,tl_fn", [
    ("resid_pre", tl_patching.get_act_patch_resid_pre),
    ("attn_out", tl_patching.get_act_patch_attn_out),
    ("z", tl_patching.get_act_patch_attn_head_out_by_pos),
])
def test_equals_transformer_lens_when_most_activations_are_equal(near_pair, kind, tl_fn):
    model, clean, corrupted = near_pair
    got, metric = patched_and_tl(model, clean, corrupted, kind, tl_fn, chunk_size=8)
    # Positions before the changed digit cannot move at layer 0: exactly the value of the
    # engine's unpatched run (the fused record where it applies), equal to the model's to rounding.
    base = metric(backend.recorded_run(model, corrupted, {hook_name(kind, 0)})[0])
    assert torch.equal(got[0, 0].reshape(-1)[0], base)
    with torch.no_grad():
        torch.testing.assert_close(base, metric(model(corrupted)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,tl_fn", [
    ("resid_pre", tl_patching.get_act_patch_resid_pre),
    ("attn_out", tl_patching.get_act_patch_attn_out),
    ("z", tl_patching.get_act_patch_attn_head_out_by_pos),
])
@pytest.mark.parametrize("hooked", [False, True])
def test_logit_positions_equal_transformer_lens(near_pair, kind, tl_fn, hooked):
    """A metric that declares the positions it reads gets the logits there alone and the same
    values as TransformerLens' loop over whole runs; the fused resid_pre suffix (no hook on the
    model) and the model's own run (a hook attached) agree."""
    model, clean, corrupted = near_pair
    answer = clean.answer_pos.tolist()
    per_example = lambda logits: logits.log_softmax(-1).gather(-1, clean.labels[..., None]).mean()  # noqa: E731
    _, cache = model.run_with_cache(clean.tokens)
    with torch.no_grad():
        want = tl_fn(model, corrupted, cache, lambda logits: per_example(logits[:, answer]))
    seen = []
    extra = [("blocks.0.hook_resid_pre", lambda act, hook: seen.append(1))] if hooked else []
    with model.hooks(fwd_hooks=extra):
        got = patch_grid(model, clean.tokens, corrupted, per_example, hook=kind, chunk_size=8,
                         logit_positions=answer)
        # The engine's unpatched run, recorded as it records it (fused only with no hook
        # attached and a resid_pre grid; up to the last position read: nothing after it can
        # reach the logits read).
        base = per_example(backend.recorded_run(model, corrupted[:, :max(answer) + 1],
                                                {hook_name(kind, 0)}, logit_positions=answer)[0])
    assert got.shape == want.shape and bool(seen) == hooked
    torch.testing.assert_close(got, want.cpu(), atol=1e-5, rtol=0)
    # After the last position read, a patch cannot reach the metric: exactly the unpatched value.
    last = got[:, -1].flatten()
    assert torch.equal(last, base.expand(len(last)))


def test_metric_runs_once_for_all_grid_points_that_change_nothing(near_pair):
    """The metric runs once per grid point whose patch changes some example before the last
    position read, and once in all for the others (they share the unpatched value): counted
    from the tokens, since a resid_pre patch at layer 0 changes what the token there changes
    and at a later layer what any token up to there changes."""
    model, clean, corrupted = near_pair
    answer = clean.answer_pos.tolist()
    calls = []

    def metric(logits):
        calls.append(1)
        return logits.log_softmax(-1).gather(-1, clean.labels[..., None]).mean()

    got = patch_grid(model, clean.tokens, corrupted, metric, logit_positions=answer)
    differs = clean.tokens != corrupted
    upto = differs.cummax(1).values  # any token up to the position differs
    n_layers, n_pos = got.shape
    changing = sum(bool((differs if layer == 0 else upto)[:, pos].any())
                   for layer in range(n_layers) for pos in range(max(answer) + 1))
    assert 0 < changing < n_layers * n_pos
    assert len(calls) == changing + 1
    with torch.no_grad():
        unpatched = metric(model(corrupted)[:, answer])
    quiet = ~torch.tensor([[bool((differs if layer == 0 else upto)[:, pos].any()) and pos <= max(answer)
                            for pos in range(n_pos)] for layer in range(n_layers)])
    torch.testing.assert_close(got[quiet], unpatched.expand(int(quiet.sum())), atol=1e-5, rtol=0)


def test_source_run_starts_where_it_first_differs_from_the_target(near_pair, monkeypatch):
    """The source run starts at the first position where any source token differs from its
    target's (before it, its activations are the target's), and stops after the last position
    read; the grid equals TransformerLens' loop."""
    model, clean, corrupted = near_pair
    if not backend.can_resume(model):
        pytest.skip("the suffix engine resumes HookedTransformer runs only (docs/backends.md)")
    answer = clean.answer_pos.tolist()
    first = int((clean.tokens != corrupted).any(0).nonzero()[0])
    assert 0 < first < max(answer)
    widths = []
    recorded_run = backend.recorded_run
    monkeypatch.setattr(backend, "recorded_run",
                        lambda model, tokens, *a, **k: widths.append(tokens.shape[1]) or recorded_run(model, tokens, *a, **k))
    metric = lambda logits: logits.log_softmax(-1).gather(-1, clean.labels[..., None]).mean()  # noqa: E731
    got = patch_grid(model, corrupted, clean.tokens, metric, logit_positions=answer)
    assert widths == [max(answer) + 1, max(answer) + 1 - first]  # the target, then the source
    _, cache = model.run_with_cache(corrupted)
    with torch.no_grad():
        want = tl_patching.get_act_patch_resid_pre(model, clean.tokens, cache,
                                                   lambda logits: metric(logits[:, answer]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_logit_positions_out_of_range(pair):
    model, clean, corrupted = pair
    with pytest.raises(AnalysisError, match="99"):
        patch_grid(model, clean.tokens, corrupted.tokens, lambda logits: logits.sum(),
                   logit_positions=[0, 99])
    with pytest.raises(AnalysisError, match=r"logit_positions=\[\] reads no position"):
        patch_grid(model, clean.tokens, corrupted.tokens, lambda logits: logits.sum(), logit_positions=[])


def test_neurons_equal_one_hook_per_grid_point(near_pair):
    model, clean, corrupted = near_pair
    metric = label_logprob_metric(clean)
    _, cache = model.run_with_cache(clean.tokens)
    got = patch_grid(model, clean.tokens, corrupted, metric, hook="mlp_post", layers=[0, 1],
                     positions=[3, 8], components=[1, 6], chunk_size=5)
    for li, layer in enumerate([0, 1]):
        for pi, pos in enumerate([3, 8]):
            for ci, neuron in enumerate([1, 6]):
                name = f"blocks.{layer}.mlp.hook_post"

                def patch(act, hook):
                    act[:, pos, neuron] = cache[name][:, pos, neuron]
                    return act

                with torch.no_grad():
                    want = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)]))
                torch.testing.assert_close(got[li, pi, ci], want, atol=1e-5, rtol=0)


def test_neuron_grid_shape_and_chunking_agree(pair):
    model, clean, corrupted = pair
    metric = label_logprob_metric(clean)
    a = patch_grid(model, clean.tokens, corrupted.tokens, metric, hook="mlp_post", layers=[1],
                   positions=[6, 7], components=[0, 5, 7], chunk_size=16)
    b = patch_grid(model, clean.tokens, corrupted.tokens, metric, hook="mlp_post", layers=[1],
                   positions=[6, 7], components=[0, 5, 7], chunk_size=4096)
    assert a.shape == (1, 2, 3)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def no_hooks(model):
    return all(len(hp.fwd_hooks) == 0 and len(hp.bwd_hooks) == 0 for hp in model.hook_dict.values())


def test_no_hook_left_after_exception(pair):
    model, clean, corrupted = pair

    def bad_metric(logits):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        patch_grid(model, clean.tokens, corrupted.tokens, bad_metric)
    assert no_hooks(model)
    bad_cache = {"blocks.0.hook_resid_pre": torch.zeros(3, 2, 2)}  # wrong shape: the hook raises
    with pytest.raises(Exception):
        patch_grid(model, clean.tokens, corrupted.tokens, label_logprob_metric(clean), layers=[0],
                   source_cache=bad_cache)
    assert no_hooks(model)


def test_bad_grid(pair):
    model, clean, corrupted = pair
    m = label_logprob_metric(clean)
    with pytest.raises(AnalysisError, match=r"layer\(s\) \[5\] out of range"):
        patch_grid(model, clean.tokens, corrupted.tokens, m, layers=[5])
    with pytest.raises(AnalysisError, match=r"position\(s\) \[40\] out of range"):
        patch_grid(model, clean.tokens, corrupted.tokens, m, positions=[40])
    # a wrong shape: the runtime type check (jaxtyping, on in the test suite) or the function's
    # own check refuses it
    with pytest.raises((AnalysisError, TypeCheckError), match="shapes differ|n pos|dimension"):
        patch_grid(model, clean.tokens, corrupted.tokens[:3], m)
    with pytest.raises(AnalysisError, match=r"head\(s\) \[9\] out of range"):
        patch_grid(model, clean.tokens, corrupted.tokens, m, hook="z", components=[9])
    with pytest.raises(AnalysisError, match="unknown hook 'resid'"):
        patch_grid(model, clean.tokens, corrupted.tokens, m, hook="resid")


def test_target_cache_runs_the_target_once(fda_tiny, monkeypatch):
    """Two sources patched into one target with one ``target_cache``: the target is recorded
    once, the values equal uncached calls, and the cache holds the target's logits at the read
    positions; another target is recorded anew."""
    task, model, data = fda_tiny
    target, other = data.test[:24], data.test[24:48]
    sources = [data.test[48:72].tokens, data.test[72:96].tokens]
    answer = target.answer_pos.tolist()
    per_example = lambda logits: logits.argmax(-1)  # noqa: E731
    grid = partial(patch_grid, model, metric=per_example, logit_positions=answer)
    want = [grid(src, target.tokens) for src in sources] + [grid(sources[0], other.tokens)]
    calls = []
    recorded_run = backend.recorded_run
    monkeypatch.setattr(backend, "recorded_run", lambda *a, **k: calls.append(1) or recorded_run(*a, **k))
    cache: dict = {}
    got = [grid(src, target.tokens, target_cache=cache) for src in sources]
    assert len(calls) == 3  # two source runs, one target run
    # At the read positions on the suffix engine; where the model cannot resume, at every
    # position up to the last read (nothing after it reaches them).
    width = len(answer) if backend.can_resume(model) else max(answer) + 1
    assert cache["logits"].shape == (len(target), width, model.cfg.d_vocab_out)
    got.append(grid(sources[0], other.tokens, target_cache=cache))
    assert len(calls) == 5  # a new target is run again
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    # The runtime type check (jaxtyping, on in the test suite) or the function's own check.
    with pytest.raises((AnalysisError, TypeCheckError), match="target_cache"):
        grid(sources[0], target.tokens, target_cache=[])
    # A token buffer refilled in place is a new target, not the cached one.
    buffer, cache = target.tokens.clone(), {}
    grid(sources[0], buffer, target_cache=cache)
    buffer.copy_(other.tokens)
    assert torch.equal(grid(sources[0], buffer, target_cache=cache), want[2])


def test_target_cache_keeps_what_a_call_without_source_cache_needs(fda_tiny):
    """A target recorded for a call given the source's activations holds the patched layers'
    keys and values alone; a later call that runs the source itself (from the target's first
    layers' keys and values) records the target again instead of reading a partial record."""
    task, model, data = fda_tiny
    target, source = data.test[:16], data.test[16:32].tokens.clone()
    source[:, :2] = target.tokens[:, :2]  # the source run starts after a shared prefix
    answer = target.answer_pos.tolist()
    metric = lambda logits: logits.log_softmax(-1)[..., 0].mean()  # noqa: E731
    last = model.cfg.n_layers - 1
    _, source_cache = backend.recorded_run(model, source, [f"blocks.{last}.hook_resid_pre"])
    cache: dict = {}
    first = patch_grid(model, source, target.tokens, metric, layers=[last], logit_positions=answer,
                       source_cache=source_cache, target_cache=cache)
    second = patch_grid(model, source, target.tokens, metric, layers=[last], logit_positions=answer,
                        target_cache=cache)
    torch.testing.assert_close(second, first, atol=1e-5, rtol=0)
    torch.testing.assert_close(second, patch_grid(model, source, target.tokens, metric, layers=[last],
                                                  logit_positions=answer, method="full"), atol=1e-5, rtol=0)
