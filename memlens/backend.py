"""The one module that knows which TransformerLens memlens runs on.

TransformerLens 3.x builds memlens models as ``HookedTransformer``; TransformerLens 4.x removed
that class, and memlens builds them as ``TransformerBridge.boot_native(...)`` instead (the
*bridge*). Both expose the legacy hook names with the legacy shapes (``blocks.0.hook_resid_pre``,
``blocks.0.attn.hook_z``, ``blocks.0.mlp.hook_post``, ...), ``run_with_cache``, ``model.hooks``,
``stop_at_layer`` and ``model.cfg``; what differs is handled here and nowhere else:

* parameters: :func:`canonical_params` gives every weight in the HookedTransformer layout
  (``blocks.0.attn.W_Q`` as ``(n_heads, d_model, d_head)``, ...), as differentiable views of the
  model's own parameters. Checkpoints are written in that layout on both versions
  (:func:`state_dict` / :func:`load_state_dict`), so one run directory serves both;
* per-head hooks for circuits (:func:`split_hooks`): the bridge's native attention refuses
  ``set_use_split_qkv_input`` and ``set_use_attn_result``, so there memlens runs a hooked forward
  of its own over the same parameters (:mod:`memlens.split_view`);
* resuming a forward at a layer on a suffix of positions with a frozen key-value cache
  (:func:`can_resume`, :func:`run_suffix`): HookedTransformer only. The bridge's
  ``start_at_layer`` still runs the earlier blocks, and its native model takes no KV cache.

docs/backends.md says what a user of each version should know.

>>> BACKEND in ("hooked", "bridge")
True
"""

from __future__ import annotations

import contextlib
import warnings
from importlib.metadata import version
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

TL_VERSION: str = version("transformer-lens")
#: "hooked" (TransformerLens 3.x, HookedTransformer) or "bridge" (4.x, TransformerBridge).
BACKEND: str = "bridge" if int(TL_VERSION.split(".")[0]) >= 4 else "hooked"
MODEL_CLASS: str = "TransformerBridge" if BACKEND == "bridge" else "HookedTransformer"

if BACKEND == "hooked":
    from transformer_lens import HookedTransformer as Model
else:
    from transformer_lens import TransformerBridge as Model
# ``Model``: the class of memlens models on this TransformerLens, for annotations
# (``model: Model``), which the test suite checks at run time.


class BackendError(RuntimeError):
    """A model or checkpoint that the installed TransformerLens cannot serve as asked."""


def describe() -> str:
    """One line for logs and run headers, e.g. ``'transformer-lens 3.9.0 (HookedTransformer)'``."""
    return f"transformer-lens {TL_VERSION} ({MODEL_CLASS})"


# --------------------------------------------------------------------------- building models

def build(*, n_layers: int, d_model: int, n_heads: int, d_head: int, d_mlp: int, act_fn: str,
          normalization_type: str | None, n_ctx: int, d_vocab: int, seed: int, tokenizer,
          device: str = "cpu") -> nn.Module:
    """A freshly initialized model of this TransformerLens version, on ``device``.

    Both kinds have the same parameters (the bridge's unembedding bias is made trainable, as
    HookedTransformer's ``b_U`` is) and compute the same function of them; their initial
    weights for one seed differ, since each version draws them in its own order.
    """
    sizes = dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_mlp=d_mlp,
                 act_fn=act_fn, normalization_type=normalization_type, n_ctx=n_ctx, d_vocab=d_vocab,
                 seed=seed, default_prepend_bos=True)
    if BACKEND == "hooked":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        with warnings.catch_warnings():
            # TransformerLens 3.9 marks HookedTransformer deprecated in favour of the bridge;
            # memlens uses the bridge on 4.x, where HookedTransformer is gone.
            warnings.filterwarnings("ignore", message="HookedTransformer is deprecated",
                                    category=DeprecationWarning)
            net = HookedTransformer(HookedTransformerConfig(**sizes, device=device),
                                    tokenizer=tokenizer, move_to_device=False)
    else:
        from transformer_lens import TransformerBridge

        net = TransformerBridge.boot_native(sizes, tokenizer=tokenizer)
        _trainable_unembed_bias(net)
    return to_device(net, device)


def _trainable_unembed_bias(net: nn.Module) -> None:
    """The native model's unembedding has no bias; the bridge adds a zero *buffer* in its
    place. HookedTransformer trains ``b_U``, so make it a zero-initialized parameter."""
    head = net.unembed.original_component
    if "bias" in head._parameters:
        return
    bias = head._buffers.pop("bias")
    head.bias = nn.Parameter(torch.zeros_like(bias))


def to_device(model: nn.Module, device: str | torch.device) -> nn.Module:
    """``model`` moved to ``device`` (and its config told), without TransformerLens' printout."""
    return model.to(torch.device(device), print_details=False)


# --------------------------------------------------------------------------- parameter layout

def _heads_in(cfg, w: Tensor) -> Tensor:
    """(n_heads*d_head, d_model) Linear weight -> (n_heads, d_model, d_head)."""
    return w.view(cfg.n_heads, cfg.d_head, cfg.d_model).transpose(1, 2)


def _heads_in_back(cfg, w: Tensor) -> Tensor:
    return w.transpose(1, 2).reshape(cfg.n_heads * cfg.d_head, cfg.d_model)


def _heads_bias(cfg, b: Tensor) -> Tensor:
    return b.view(cfg.n_heads, cfg.d_head)


def _flat(cfg, b: Tensor) -> Tensor:
    return b.reshape(-1)


def _heads_out(cfg, w: Tensor) -> Tensor:
    """(d_model, n_heads*d_head) output-projection weight -> (n_heads, d_head, d_model)."""
    return w.t().view(cfg.n_heads, cfg.d_head, cfg.d_model)


def _heads_out_back(cfg, w: Tensor) -> Tensor:
    return w.reshape(cfg.n_heads * cfg.d_head, cfg.d_model).t()


def _same(cfg, t: Tensor) -> Tensor:
    return t


def _t(cfg, t: Tensor) -> Tensor:
    return t.t()


# bridge key suffix -> (HookedTransformer key suffix, to canonical, from canonical). Longest
# suffixes first: ".attn.q.bias" must win over the LayerNorm ".bias".
_LAYOUT: list[tuple[str, str, Callable, Callable]] = [
    *[(f".attn.{x}.weight", f".attn.W_{x.upper()}", _heads_in, _heads_in_back) for x in "qkv"],
    *[(f".attn.{x}.bias", f".attn.b_{x.upper()}", _heads_bias, _flat) for x in "qkv"],
    (".attn.o.weight", ".attn.W_O", _heads_out, _heads_out_back),
    (".attn.o.bias", ".attn.b_O", _same, _same),
    (".mlp.in.weight", ".mlp.W_in", _t, _t),
    (".mlp.in.bias", ".mlp.b_in", _same, _same),
    (".mlp.out.weight", ".mlp.W_out", _t, _t),
    (".mlp.out.bias", ".mlp.b_out", _same, _same),
    ("unembed.weight", "unembed.W_U", _t, _t),
    ("unembed.bias", "unembed.b_U", _same, _same),
    ("pos_embed.weight", "pos_embed.W_pos", _same, _same),
    ("embed.weight", "embed.W_E", _same, _same),
    (".weight", ".w", _same, _same),  # LayerNorm scale
    (".bias", ".b", _same, _same),    # LayerNorm bias
]


def _bridge_to_canonical(key: str) -> tuple[str, Callable]:
    for ours, theirs, to_canonical, _ in _LAYOUT:
        if key.endswith(ours) and (key == ours or ours.startswith(".") or key.endswith("." + ours)):
            return key[: len(key) - len(ours)] + theirs, to_canonical
    raise BackendError(f"no HookedTransformer name for the bridge parameter {key!r}")


def _canonical_to_bridge(key: str) -> tuple[str, Callable]:
    for ours, theirs, _, from_canonical in _LAYOUT:
        if key.endswith(theirs) and (key == theirs or theirs.startswith(".") or key.endswith("." + theirs)):
            return key[: len(key) - len(theirs)] + ours, from_canonical
    raise BackendError(f"no bridge name for the checkpoint tensor {key!r}")


def _bridge_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The bridge's learnable tensors under its clean names (``blocks.0.attn.q.weight``)."""
    names = {id(p) for p in model.parameters()}
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if id(v) in names}


def canonical_params(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter under its HookedTransformer name and shape, as views of the model's own
    tensors (gradients reach the model).

    >>> from memlens.models import ModelConfig, build_model
    >>> from memlens.tasks import make_task
    >>> net = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), make_task("fda", preset="tiny"), seed=0)
    >>> tuple(canonical_params(net)["blocks.0.attn.W_Q"].shape)
    (2, 32, 16)
    """
    if BACKEND == "hooked":
        return dict(model.named_parameters())
    out = {}
    for key, tensor in _bridge_tensors(model).items():
        name, convert = _bridge_to_canonical(key)
        out[name] = convert(model.cfg, tensor)
    return out


def state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The weights in the checkpoint layout (HookedTransformer names and shapes), contiguous,
    on the CPU: what both versions write and read."""
    return {k: v.detach().cpu().contiguous() for k, v in canonical_params(model).items()}


def load_state_dict(model: nn.Module, tensors: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Load weights in the checkpoint layout into ``model``. Extra non-parameter entries that
    HookedTransformer writes (its attention ``mask`` and ``IGNORE`` buffers) are accepted and
    ignored; a missing parameter or a wrong shape is a :class:`BackendError` naming them."""
    expected = {k: tuple(v.shape) for k, v in canonical_params(model).items()}
    missing = sorted(set(expected) - set(tensors))
    shapes = [f"{k} {tuple(tensors[k].shape)} (model {expected[k]})" for k in expected
              if k in tensors and tuple(tensors[k].shape) != expected[k]]
    unknown = sorted(k for k in set(tensors) - set(expected) if not k.endswith((".mask", ".IGNORE")))
    if missing or shapes or unknown:
        raise BackendError(f"{source} does not match the model: missing {missing[:5]}, shape "
                           f"mismatch {shapes[:5]}, unknown {unknown[:5]}")
    with torch.no_grad():
        if BACKEND == "hooked":
            params = dict(model.named_parameters())
            for k in expected:
                params[k].copy_(tensors[k])
            return
        for key, param in _bridge_tensors(model).items():
            name, _ = _bridge_to_canonical(key)
            _, from_canonical = _canonical_to_bridge(name)
            param.copy_(from_canonical(model.cfg, tensors[name]))


def canonical_names(model: nn.Module) -> dict[int, str]:
    """``id(parameter)`` -> its checkpoint name, for naming optimizer state portably."""
    if BACKEND == "hooked":
        return {id(p): k for k, p in model.named_parameters()}
    return {id(p): _bridge_to_canonical(k)[0] for k, p in _bridge_tensors(model).items()}


def to_canonical(model: nn.Module, param: Tensor, value: Tensor) -> Tensor:
    """``value`` shaped like ``param`` (e.g. an AdamW moment) in the checkpoint layout."""
    if BACKEND == "hooked":
        return value
    key = {id(p): k for k, p in _bridge_tensors(model).items()}[id(param)]
    return _bridge_to_canonical(key)[1](model.cfg, value)


def from_canonical(model: nn.Module, param: Tensor, value: Tensor) -> Tensor:
    """Inverse of :func:`to_canonical`: a checkpoint-layout tensor shaped like ``param``."""
    if BACKEND == "hooked":
        return value
    key = {id(p): k for k, p in _bridge_tensors(model).items()}[id(param)]
    name = _bridge_to_canonical(key)[0]
    return _canonical_to_bridge(name)[1](model.cfg, value).contiguous()


# --------------------------------------------------------------------------- per-head hooks

@contextlib.contextmanager
def split_hooks(model: nn.Module) -> Iterator[nn.Module]:
    """A model with per-head ``hook_{q,k,v}_input``, per-head ``attn.hook_result`` and
    ``hook_mlp_in`` (HookedTransformer's split hooks), to use inside the ``with``.

    On HookedTransformer that is ``model`` itself with ``use_split_qkv_input``,
    ``use_attn_result`` and ``use_hook_mlp_in`` on (restored afterwards). The bridge's native
    attention supports neither of the first two, so there it is a
    :class:`~memlens.split_view.SplitView`: the same function of the same parameters, with those
    hooks (tested equal to HookedTransformer's split hooks on the same weights).
    """
    if BACKEND == "bridge":
        from memlens.split_view import SplitView

        yield SplitView(model)
        return
    old = (model.cfg.use_split_qkv_input, model.cfg.use_attn_result, model.cfg.use_hook_mlp_in)
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    try:
        yield model
    finally:
        model.set_use_split_qkv_input(old[0])
        model.set_use_attn_result(old[1])
        model.set_use_hook_mlp_in(old[2])


# --------------------------------------------------------------------------- suffix runs

def can_resume(model: nn.Module) -> bool:
    """Whether :func:`run_suffix` can run ``model`` from a layer on a suffix of positions.

    HookedTransformer can (``start_at_layer`` and a frozen ``TransformerLensKeyValueCache``).
    The bridge cannot: its ``start_at_layer`` still runs the blocks below, and its native model
    ignores key-value caches; the patching engine then patches whole sequences instead.
    """
    return BACKEND == "hooked"


def run_from_layer(model: nn.Module, resid: Tensor, layer: int) -> Tensor:
    """Logits of whole sequences from ``resid``, the residual stream entering ``layer`` (batch,
    pos, d_model); hooks attached with ``model.hooks`` fire in the layers run.

    HookedTransformer runs it with ``start_at_layer``. The bridge's ``start_at_layer`` would
    still run the blocks below, so there the bridge's own block modules from ``layer`` on, its
    final norm and its unembedding are called in turn (the same modules and hooks as its forward).
    """
    if BACKEND == "hooked":
        return model(resid, start_at_layer=layer, return_type="logits")
    x = resid
    for block in model.blocks[layer:]:
        x = block(x)
        x = x[0] if isinstance(x, tuple) else x
    return model.unembed(model.ln_final(x))


def run_suffix(model: nn.Module, resid: Tensor, layer: int, keys: list[Tensor],
               values: list[Tensor]) -> Tensor:
    """Logits of positions ``p..`` given the residual stream entering ``layer`` there
    (``resid``: batch, positions p.., d_model) and, for every layer from ``layer`` on, the keys
    and values of positions ``< p`` (``keys[i - layer]``: batch, p, heads, d_head; with
    ``p = 0``, a plain run from the layer). Hooks attached with ``model.hooks`` fire as in a
    full run (at positions p.. only)."""
    if not can_resume(model):
        raise BackendError(f"{describe()} cannot resume a forward pass at a layer with a "
                           "key-value cache; run whole sequences instead")
    if keys[0].shape[1] == 0:  # no earlier positions: a plain run from the layer
        return run_from_layer(model, resid, layer)
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    empty = keys[0][:, :0]
    entries = [TransformerLensKeyValueCacheEntry(empty, empty, frozen=True) for _ in range(layer)]
    entries += [TransformerLensKeyValueCacheEntry(k, v, frozen=True) for k, v in zip(keys, values)]
    mask = torch.ones(len(resid), keys[0].shape[1], dtype=torch.int, device=resid.device)
    cache = TransformerLensKeyValueCache(entries, mask, frozen=True)
    return model(resid, start_at_layer=layer, past_kv_cache=cache, return_type="logits")


def has_hooks(model: nn.Module) -> bool:
    """Whether any hook is attached to one of ``model``'s hook points (e.g. inside a
    ``model.hooks(...)`` block, or a permanent hook)."""
    return any(len(hp._forward_hooks) or len(hp._forward_pre_hooks) or len(hp._backward_hooks)
               for hp in model.hook_dict.values())


def _fused(model: nn.Module) -> bool:
    """Whether the fused forward (FastForward) may stand in for ``model``: a HookedTransformer
    it covers, with no hook attached (a hook's effect would be lost)."""
    from memlens.training.fast_forward import supports

    return can_resume(model) and supports(model) and not has_hooks(model)


def logits_at(model: nn.Module, tokens: Tensor, positions: Tensor | list[int]) -> Tensor:
    """``model(tokens)[:, positions]`` (batch, len(positions), vocab), without gradients.

    With nothing hooked, the fused forward runs, its last layer at ``positions`` alone (equal to
    float rounding, tests/training/test_fast_forward.py); otherwise the model itself.
    """
    from memlens.training.fast_forward import FastForward

    index = torch.as_tensor(positions, dtype=torch.long, device=tokens.device)
    with torch.no_grad():
        if _fused(model):
            return FastForward(model)(tokens, positions=index)
        return model(tokens, return_type="logits")[:, index]


_RECORDED = {"hook_resid_pre": "resid", "hook_resid_post": "resid", "attn.hook_k": "keys",
             "attn.hook_v": "values", "attn.hook_q": "queries"}


def _recorded_as(name: str, n_layers: int) -> tuple[str, int] | None:
    """Where :meth:`FastForward.record`'s output holds hook ``name``: (``resid``, ``keys`` or
    ``values``, index), or None when it does not record it. A layer's resid_post is the next
    layer's resid_pre (the same tensor in TransformerLens)."""
    parts = name.split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit() or int(parts[1]) >= n_layers:
        return None
    kind = _RECORDED.get(".".join(parts[2:]))
    if kind is None:
        return None
    return kind, int(parts[1]) + (parts[2] == "hook_resid_post")


def records_fused(model: nn.Module, names: set[str] | list[str]) -> bool:
    """Whether :func:`recorded_run` records ``names`` with the fused forward (and so can take
    a ``prefix``): nothing hooked, and only hooks that :meth:`FastForward.record` returns."""
    n_layers = model.cfg.n_layers
    return _fused(model) and all(_recorded_as(name, n_layers) is not None for name in names)


def recorded_run(model: nn.Module, tokens: Tensor, names: set[str] | list[str],
                 stop_at_layer: int | None = None, logit_positions: list[int] | None = None,
                 return_logits: bool = True, prefix: tuple[list[Tensor], list[Tensor]] | None = None
                 ) -> tuple[Tensor | None, dict[str, Tensor]]:
    """``model.run_with_cache(tokens, names_filter=names, stop_at_layer=...)`` without
    gradients, as ``(output, {name: activation})``; the output is the logits (at
    ``logit_positions`` alone when given; None with ``return_logits=False``), or the residual
    stream entering ``stop_at_layer``.

    A model :func:`resume_logits` would run fused, asked only for layers' ``hook_resid_pre``,
    ``hook_resid_post``, ``attn.hook_q``, ``attn.hook_k`` and ``attn.hook_v``, is recorded by
    the fused forward (:meth:`FastForward.record`, equal to float rounding); anything else runs
    the model's own ``run_with_cache``. As there, a run stopped at layer ``l`` fires no hook of
    layer ``l`` or later.

    ``prefix``: keys and values of the ``b`` positions before ``tokens`` for every layer run
    (:meth:`FastForward.record`); what is returned then covers positions ``b..`` alone. Only
    where :func:`records_fused` holds; without logit positions.
    """
    from memlens.training.fast_forward import FastForward

    names = set(names)
    n_layers = model.cfg.n_layers
    index = None if logit_positions is None else \
        torch.as_tensor(logit_positions, dtype=torch.long, device=tokens.device)
    where = {name: _recorded_as(name, n_layers) for name in names}
    # With logit positions the last layer's output would exist at those alone: when its
    # resid_post is asked for, the whole run is recorded and the logits indexed afterwards.
    partial = index is not None and stop_at_layer is None and any(
        w is not None and w[0] == "resid" and w[1] == n_layers for w in where.values())
    if prefix is not None and (index is not None or not records_fused(model, names)):
        raise BackendError("a recorded run with a prefix needs the fused record (backend.records_fused) "
                           "and no logit positions")
    with torch.no_grad():
        if records_fused(model, names):
            queries = any(w[0] == "queries" for w in where.values())
            out, resid, keys, values, qs = FastForward(model).record(
                tokens, stop_at_layer, None if partial else index, logits=return_logits, queries=queries,
                prefix=prefix)
            fired = n_layers if stop_at_layer is None else stop_at_layer  # layers run
            found = {"resid": resid, "keys": keys, "values": values, "queries": qs}
            acts = {name: found[kind][i] for name, (kind, i) in where.items()
                    if i < fired or (kind == "resid" and i == fired and not name.endswith("resid_pre"))}
            if stop_at_layer is not None:
                return resid[-1], acts
            return (out[:, index] if partial and out is not None else out), acts
        out, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names,
                                          stop_at_layer=stop_at_layer,
                                          return_type="logits" if return_logits else None)
        acts = {name: cache[name] for name in names if name in cache.cache_dict}
        if index is not None and out is not None and stop_at_layer is None:
            out = out[:, index]
        return out, acts


def resume_logits(model: nn.Module, resid: Tensor, layer: int, keys: list[Tensor],
                  values: list[Tensor], queries: list[int] | None = None,
                  known: tuple[Tensor, ...] | None = None) -> Tensor:
    """:func:`run_suffix`'s logits at the suffix indices ``queries`` (all by default).

    A model with no hook attached and a configuration that
    :class:`memlens.training.fast_forward.FastForward` covers runs its fused suffix, whose last
    layer computes ``queries`` alone (equal to float rounding); otherwise the model itself runs
    with its hooks (:func:`run_suffix`) and the logits are indexed afterwards. Positions after
    the last query are not run (a hook there does not fire).

    ``known``: ``layer``'s keys and values (and optionally queries) in the recorded run that
    ``resid`` differs from at its first position alone, at its positions 0.. up to at least the
    suffix's end (batch, P, heads, d_head); the fused suffix then reuses them
    (:meth:`FastForward.resume`), the model's own run computes them again.
    """
    from memlens.training.fast_forward import FastForward

    if queries is not None and len(queries):
        if min(queries) < 0:
            raise BackendError(f"queries={list(queries)} are invalid: expected suffix indices >= 0")
        # Causal attention: positions after the last query cannot reach it; none is run.
        resid = resid[:, :max(queries) + 1]
    need = keys[0].shape[1] + resid.shape[1]
    if known is not None and min(kv.shape[1] for kv in known) < need:
        raise BackendError(f"known keys and values cover {[kv.shape[1] for kv in known]} positions: "
                           f"expected at least {need}, the recorded run up to the suffix's end")
    if _fused(model):
        return FastForward(model).resume(resid, layer, keys, values, queries, known)
    logits = run_suffix(model, resid, layer, keys, values)
    return logits if queries is None else logits[:, queries]
