"""The training forward pass, computed from a model's own parameters without hooks.

A HookedTransformer (and, more so, a TransformerBridge) runs each layer as many small modules
and hook points (manual LayerNorm, separate Q/K/V einsums); on the small models memlens trains,
that Python and kernel-launch overhead is most of the step (docs/benchmarks.md: the same architecture in plain PyTorch is
1.2x faster on 2 CPU cores and 2x on an H200). :class:`FastForward` computes the same function
with fused operations (``F.layer_norm``, one QKV matrix product, ``addmm``)
over the *same parameter tensors* (read through :func:`memlens.backend.canonical_params`, on
either TransformerLens version), so gradients land in the model, and evaluation,
checkpoints and every analysis keep using it with hooks as usual. Equality with
``model(tokens)`` is tested to 1e-5 (tests/training/test_fast_forward.py).

Configurations outside the common case (rotary or shortformer positions, gated MLPs, ...) are
not covered: :func:`supports` says so and the trainer then uses the model itself.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from memlens.backend import canonical_params

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


# torch's CPU softmax runs a scalar loop over rows narrower than this (the AVX-512 width in
# float32): 10x slower per element at 15 keys than at 16 (torch 2.13, 2 cores;
# benchmarks/softmax_width.py). Suffix runs pad attention rows with fewer keys to it.
SOFTMAX_FAST_WIDTH = 16


def _as_slice(positions: list[int]) -> slice | list[int]:
    """``positions`` as a slice when they are consecutive and ascending (indexing then takes a
    view instead of a copy), else as they are."""
    if positions and positions == list(range(positions[0], positions[0] + len(positions))):
        return slice(positions[0], positions[0] + len(positions))
    return positions


class Recorded(NamedTuple):
    """:meth:`FastForward.record`'s output (lists indexed by layer)."""

    logits: torch.Tensor | None
    resid: list[torch.Tensor]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    queries: list[torch.Tensor]


def supports(model) -> bool:
    """Whether :class:`FastForward` reproduces ``model``'s forward pass exactly."""
    cfg = model.cfg
    return (
        cfg.positional_embedding_type == "standard"
        and cfg.normalization_type in ("LN", "LNPre", None)
        and cfg.act_fn in ACTIVATIONS
        and not cfg.attn_only
        and not cfg.gated_mlp
        and cfg.use_attn_scale
        and not cfg.scale_attn_by_inverse_layer_idx
        and cfg.n_key_value_heads in (None, cfg.n_heads)
        and getattr(cfg, "attn_scores_soft_cap", -1.0) in (None, -1.0)
        and getattr(cfg, "output_logits_soft_cap", -1.0) in (None, -1.0)
        and not getattr(cfg, "parallel_attn_mlp", False)
        and cfg.n_devices == 1
    )


class FastForward(nn.Module):
    """``FastForward(model)(tokens)`` equals ``model(tokens)`` (logits), without hooks.

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=0)
    >>> tokens = task.generate(0).test.tokens[:4]
    >>> torch.allclose(FastForward(model)(tokens), model(tokens), atol=1e-5)
    True
    """

    def __init__(self, model):
        super().__init__()
        if not supports(model):
            raise ValueError("FastForward does not cover this model configuration; "
                             "call the model itself")
        self.model = model  # a submodule: .parameters() are the model's
        cfg = model.cfg
        self.act = ACTIVATIONS[cfg.act_fn]
        # HookedTransformer stores sqrt(d_head) in attn_scale; the bridge stores -1 for "default".
        self.scale = 1.0 / (cfg.attn_scale if cfg.attn_scale and cfg.attn_scale > 0 else math.sqrt(cfg.d_head))
        # scaled_dot_product_attention or the explicit softmax; None: the fused kernel on CUDA only.
        self.fused_attention: bool | None = None

    def _norm(self, w: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
        kind = self.model.cfg.normalization_type
        if kind is None:
            return x
        if kind == "LN":
            return F.layer_norm(x, x.shape[-1:], w[f"{prefix}.w"], w[f"{prefix}.b"], eps=self.model.cfg.eps)
        return F.layer_norm(x, x.shape[-1:], None, None, eps=self.model.cfg.eps)  # LNPre

    def forward(self, tokens: torch.Tensor, return_type: str = "logits",
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, pos, vocab); with ``positions``, only at those positions
        (batch, len(positions), vocab), equal to ``model(tokens)[:, positions]``.

        The loss reads only the answer-predicting positions, and in the last layer nothing at
        another position reaches them except its key and value: there the queries, the
        attention output, the MLP and the unembedding run at ``positions`` alone (on FDA small,
        5 of 16 positions: about a quarter of a training step's arithmetic).
        """
        if return_type != "logits":
            raise ValueError(f"return_type={return_type!r} is invalid: FastForward returns logits")
        cfg = self.model.cfg
        w = canonical_params(self.model)
        n, pos = tokens.shape
        x = w["embed.W_E"][tokens] + w["pos_embed.W_pos"][:pos]
        for layer in range(cfg.n_layers):
            last = positions is not None and layer == cfg.n_layers - 1
            x = self._block(w, f"blocks.{layer}", x, positions if last else None)
        width = x.shape[1]
        x = self._norm(w, "ln_final", x).reshape(n * width, -1)
        return torch.addmm(w["unembed.b_U"], x, w["unembed.W_U"]).view(n, width, -1)

    @torch.no_grad()
    def record(self, tokens: torch.Tensor, stop_at_layer: int | None = None,
               positions: torch.Tensor | None = None, logits: bool = True, queries: bool = False,
               prefix: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None) -> Recorded:
        """One unhooked run and what a patching engine reads of it (no gradients), a
        :class:`Recorded` ``(logits, resid, keys, values, queries)``. ``resid[l]`` is the
        residual stream entering layer ``l`` (``blocks.l.hook_resid_pre``), and
        ``resid[n_layers]`` the last layer's output (``hook_resid_post``; at ``positions`` alone
        when they are given); ``keys[l]`` and ``values[l]`` are layer ``l``'s keys and values in
        TransformerLens' cache layout (batch, pos, heads, d_head: views of head-major storage,
        which the suffix runs read without copying), and with ``queries=True``
        ``queries[l]`` its queries at every position (``attn.hook_q``; else empty). With
        ``stop_at_layer`` the run stops there, as ``model(..., stop_at_layer=...)``: ``resid``
        then ends with the input of that layer and ``logits`` is None. ``positions``: logits at
        those alone; ``logits=False``: none (the unembedding is skipped).

        ``prefix``: keys and values (TransformerLens' layout, one per layer run) of ``b``
        positions that come before ``tokens``: the run is then that of positions ``b..`` of
        the whole sequence, and everything it returns covers those positions alone (a sequence
        that shares its first ``b`` tokens with a recorded one need not run them again).
        """
        cfg = self.model.cfg
        w = canonical_params(self.model)
        n, pos = tokens.shape
        end = cfg.n_layers if stop_at_layer is None else stop_at_layer
        start = 0
        if prefix is not None:
            if positions is not None:
                raise ValueError("record with a prefix returns its own positions: drop positions")
            if len(prefix[0]) < end or len(prefix[1]) < end:
                raise ValueError(f"prefix holds keys and values of {len(prefix[0])} and {len(prefix[1])} "
                                 f"layers: expected {end}, one per layer run")
            start = prefix[0][0].shape[1]
            shapes = {tuple(kv.shape[:2]) for kv in prefix[0][:end] + prefix[1][:end]}
            if shapes != {(n, start)}:
                raise ValueError(f"prefix keys and values have (batch, positions) {sorted(shapes)}: "
                                 f"expected ({n}, {start}) in every layer")
        x = w["embed.W_E"][tokens] + w["pos_embed.W_pos"][start:start + pos]
        resid, keys, values, qs = [], [], [], []
        for layer in range(end):
            resid.append(x)
            kv: list[torch.Tensor] = []
            last = positions is not None and layer == cfg.n_layers - 1
            before = None if prefix is None else \
                (prefix[0][layer].transpose(1, 2), prefix[1][layer].transpose(1, 2))
            x = self._block(w, f"blocks.{layer}", x, positions if last else None, before, kv_out=kv,
                            record_queries=queries)
            keys.append(kv[0])
            values.append(kv[1])
            qs.extend(kv[2:])
        resid.append(x)
        if stop_at_layer is not None or not logits:
            return Recorded(None, resid, keys, values, qs)
        width = x.shape[1]
        x = self._norm(w, "ln_final", x).reshape(n * width, -1)
        out = torch.addmm(w["unembed.b_U"], x, w["unembed.W_U"]).view(n, width, -1)
        return Recorded(out, resid, keys, values, qs)

    @torch.no_grad()
    def resume(self, resid: torch.Tensor, layer: int, keys: list[torch.Tensor],
               values: list[torch.Tensor], queries: list[int] | None = None,
               known: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """Logits of a suffix of positions ``p..``, run from ``layer`` on (no gradients).

        ``resid`` (batch, s, d_model) is the residual stream entering ``layer`` at positions
        ``p..p+s-1``; ``keys[i]`` and ``values[i]`` (batch, p, heads, d_head, TransformerLens'
        cache layout) are layer ``layer + i``'s keys and values of the positions before ``p``.
        With ``queries`` (indices into the suffix) the last layer runs its queries, attention
        output, MLP and unembedding there alone: (batch, len(queries), vocab). Equals
        :func:`memlens.backend.run_suffix` to float rounding (tests/training/test_fast_forward.py).

        ``known``: layer ``layer``'s keys and values in the recorded run that ``resid``
        differs from at its first position alone (a ``resid_pre`` patch), at its positions
        ``0..P-1`` with ``P >= p + s`` (batch, P, heads, d_head), and optionally its queries
        (same layout). That layer then computes keys and values at ``p`` alone, and queries
        where they are read unless given: with all three it normalizes and projects position
        ``p`` alone. Attention reads the recorded keys and values as they are, position ``p``'s
        score and value put in on the side (no copy of the keys and values). The caller vouches
        that they are the keys, values (and queries) of the recorded run; ``keys[0]`` and
        ``values[0]`` are then not read.
        """
        cfg = self.model.cfg
        w = canonical_params(self.model)
        x = resid
        n, suffix = resid.shape[:2]
        index = host = None
        if queries is not None:  # on the host: negative indices counted from the end, as in indexing
            host = torch.as_tensor(queries).tolist()
            if any(not -suffix <= q < suffix for q in host):
                raise ValueError(f"queries={host} are out of range for a suffix of {suffix} positions")
            host = [q % suffix for q in host]
            index = torch.as_tensor(host, dtype=torch.long, device=resid.device)
            if not host:  # nothing is read
                return resid.new_empty(n, 0, w["unembed.W_U"].shape[1])
        if known is not None:
            if len(known) not in (2, 3):
                raise ValueError(f"known holds {len(known)} tensors: expected keys and values, "
                                 "and optionally queries")
            need = keys[0].shape[1] + suffix
            for name, kv in zip(("keys", "values", "queries"), known):
                if kv.shape[0] != n or kv.shape[1] < need:
                    raise ValueError(f"known {name} have (batch, positions) {tuple(kv.shape[:2])}: "
                                     f"expected ({n}, at least {need}), the recorded run up to the "
                                     "suffix's end")
        for i, block in enumerate(range(layer, cfg.n_layers)):
            last = index is not None and block == cfg.n_layers - 1
            prefix = (keys[i].transpose(1, 2), values[i].transpose(1, 2))  # (batch, heads, p, d_head)
            x = self._block(w, f"blocks.{block}", x, index if last else None, prefix,
                            known=known if i == 0 else None, query_list=host if last else None)
        n, width = x.shape[:2]
        x = self._norm(w, "ln_final", x).reshape(n * width, -1)
        return torch.addmm(w["unembed.b_U"], x, w["unembed.W_U"]).view(n, width, -1)

    def _block(self, w: dict[str, torch.Tensor], p: str, x: torch.Tensor,
               queries: torch.Tensor | None,
               prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
               kv_out: list[torch.Tensor] | None = None,
               known: tuple[torch.Tensor, ...] | None = None,
               query_list: list[int] | None = None, record_queries: bool = False) -> torch.Tensor:
        """One transformer block; with ``queries`` (positions), its output at those alone;
        with ``prefix`` (keys, values of earlier positions), ``x`` is the suffix after them;
        ``kv_out`` receives this block's keys and values (batch, pos, heads, d_head), and its
        queries at every position with ``record_queries``; ``known``: the keys and values (and
        queries) of the recorded run that ``x`` differs from at its first position alone, at
        its positions 0.. (:meth:`resume`); ``query_list``: ``queries`` on the host (none:
        every position)."""
        cfg = self.model.cfg
        n, pos, _ = x.shape
        heads, d_head = cfg.n_heads, cfg.d_head
        # One product for Q, K and V: weights (3, heads, d_model, d_head) -> (d_model, 3*heads*d_head).
        w_qkv = torch.stack([w[f"{p}.attn.W_{c}"] for c in "QKV"]).permute(2, 0, 1, 3).reshape(cfg.d_model, -1)
        b_qkv = torch.stack([w[f"{p}.attn.b_{c}"] for c in "QKV"]).reshape(-1)
        before = 0 if prefix is None else prefix[0].shape[2]
        # The query positions as an index: a view where they are consecutive host positions.
        take = None if queries is None else _as_slice(query_list) if query_list is not None else queries
        if known is not None:
            if kv_out is not None:
                raise ValueError("kv_out records a whole block's keys; with known they are not computed")
            z = self._patched_first_attention(w, p, x, w_qkv, b_qkv, known, query_list, before)
            if take is not None:
                x = x[:, take]
        else:
            h = self._norm(w, f"{p}.ln1", x)
            q, k, v = torch.addmm(b_qkv, h.reshape(n * pos, -1), w_qkv).view(n, pos, 3, heads, d_head) \
                .permute(2, 0, 3, 1, 4).unbind(0)  # each (n, heads, pos, d_head)
            if kv_out is not None:
                # Head-major copies (views would keep the whole QKV product alive), handed out
                # in TransformerLens' layout as views: suffix runs read them without a copy.
                kv_out.extend((k.contiguous().transpose(1, 2), v.contiguous().transpose(1, 2)))
                if record_queries:
                    kv_out.append(q.contiguous().transpose(1, 2))
            if take is not None:
                q = q[:, :, take]
            if before:
                k, v = torch.cat([prefix[0].to(k.dtype), k], 2), torch.cat([prefix[1].to(v.dtype), v], 2)
            # Query i (absolute position before + i) sees keys 0..before + i.
            mask = torch.ones(pos, before + pos, dtype=torch.bool, device=x.device).triu(before + 1)
            if take is not None:
                mask, x = mask[take], x[:, take]
            z = self._attend(q, k, v, mask, resumed=prefix is not None)
        width = z.shape[2]
        z = z.transpose(1, 2).reshape(n * width, heads * d_head)
        w_o = w[f"{p}.attn.W_O"].reshape(heads * d_head, cfg.d_model)
        x = x + torch.addmm(w[f"{p}.attn.b_O"], z, w_o).view(n, width, -1)
        h = self._norm(w, f"{p}.ln2", x).reshape(n * width, -1)
        hidden = torch.addmm(w[f"{p}.mlp.b_in"], h, w[f"{p}.mlp.W_in"])
        # In place on the product's own output (its backward does not read it): on 2 CPU
        # cores F.relu's out-of-place kernel is 4x slower than relu_.
        hidden = hidden.relu_() if self.model.cfg.act_fn == "relu" else self.act(hidden)
        return x + torch.addmm(w[f"{p}.mlp.b_out"], hidden, w[f"{p}.mlp.W_out"]).view(n, width, -1)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                resumed: bool) -> torch.Tensor:
        """Softmax attention of ``q`` over ``k``, ``v`` (each (n, heads, ·, d_head)); ``mask``
        (queries, keys) is True where a query must not look. ``resumed``: a suffix run."""
        if q.is_cuda if self.fused_attention is None else self.fused_attention:
            # One fused kernel on the GPU, where the step is bound by kernel launches.
            return F.scaled_dot_product_attention(q, k, v, attn_mask=~mask, scale=self.scale)
        # Explicit softmax attention, as TransformerLens computes it: on 2 CPU cores it is
        # 1.4x faster than scaled_dot_product_attention at these sequence lengths.
        scores = (q @ k.transpose(-1, -2) * self.scale).masked_fill(mask, float("-inf"))
        return self._probabilities(scores, resumed) @ v

    def _probabilities(self, scores: torch.Tensor, resumed: bool) -> torch.Tensor:
        """``scores.softmax(-1)``, a fresh tensor."""
        n_keys = scores.shape[-1]
        if resumed and n_keys < SOFTMAX_FAST_WIDTH:
            # Suffix runs (analyses) only, so that training and recorded runs keep their exact
            # floats: padded with keys no query sees (probability 0), the same values to float
            # rounding, faster.
            scores = F.pad(scores, (0, SOFTMAX_FAST_WIDTH - n_keys), value=float("-inf"))
        return scores.softmax(-1)[..., :n_keys]

    def _patched_first_attention(self, w: dict[str, torch.Tensor], p: str, x: torch.Tensor,
                                 w_qkv: torch.Tensor, b_qkv: torch.Tensor,
                                 known: tuple[torch.Tensor, ...], queries: list[int] | None,
                                 before: int) -> torch.Tensor:
        """The attention output (n, heads, len(queries), d_head) of block ``p`` at suffix
        positions ``queries`` (non-negative, on the host; all when None), for a suffix ``x``
        starting at absolute position ``before`` whose input differs from a recorded run there
        alone. ``known``: that run's keys, values (and queries) at positions 0.. (TransformerLens'
        cache layout). Position ``before``'s query, key and value are computed; the other
        queries are recorded, or computed where read. Attention reads the recorded keys and
        values as they are and puts position ``before``'s score and value in on the side.
        The split is made on the host: no GPU synchronization."""
        cfg = self.model.cfg
        n, pos, _ = x.shape
        heads, d_head = cfg.n_heads, cfg.d_head
        h0 = self._norm(w, f"{p}.ln1", x[:, 0])  # layer norm is per position
        q0, k0, v0 = torch.addmm(b_qkv, h0, w_qkv).view(n, 3, heads, d_head).unbind(1)
        # The recorded run's keys up to the suffix's end, or up to the softmax's fast width
        # when the run is that long (rows are padded to it anyway; whole tensors need no copy).
        n_keys = before + pos
        if n_keys < SOFTMAX_FAST_WIDTH:
            n_keys = min(known[0].shape[1], SOFTMAX_FAST_WIDTH)
        keys, values = (kv[:, :n_keys].transpose(1, 2).to(k0.dtype) for kv in known[:2])
        want = list(range(pos)) if queries is None else queries
        first_slots = [i for i, t in enumerate(want) if t == 0]
        later_slots = [i for i, t in enumerate(want) if t > 0]
        later = [before + want[i] for i in later_slots]
        q_later = None
        if later_slots and len(known) == 3:
            q_later = known[2].transpose(1, 2)[:, :, _as_slice(later)].to(q0.dtype)
        elif later_slots:  # W_Q alone: the first third of the fused product's columns
            width = heads * d_head
            h = self._norm(w, f"{p}.ln1", x[:, [t - before for t in later]])
            q_later = torch.addmm(b_qkv[:width], h.reshape(n * len(later), -1), w_qkv[:, :width]) \
                .view(n, len(later), heads, d_head).transpose(1, 2)
        if first_slots:
            q = q0.new_empty(n, heads, len(want), d_head)
            q[:, :, first_slots] = q0[:, :, None]
            if q_later is not None:
                q[:, :, later_slots] = q_later
        else:  # the recorded or projected queries as they are
            q = q_later
        absolute = torch.tensor([before + t for t in want], device=x.device)
        mask = torch.arange(n_keys, device=x.device) > absolute[:, None]  # (queries, keys)
        if q.is_cuda if self.fused_attention is None else self.fused_attention:
            keys, values = keys.clone(), values.clone()
            keys[:, :, before], values[:, :, before] = k0, v0
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=~mask, scale=self.scale)
        scores = q @ keys.transpose(-1, -2)
        scores[..., before] = (q * k0[:, :, None]).sum(-1)
        probs = self._probabilities((scores * self.scale).masked_fill(mask, float("-inf")), resumed=True)
        patched = probs[..., before].clone()
        probs[..., before] = 0.0
        return torch.addcmul(probs @ values, patched[..., None], v0[:, :, None])
