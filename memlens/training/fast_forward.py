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
               positions: torch.Tensor | None = None, logits: bool = True
               ) -> tuple[torch.Tensor | None, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """One unhooked run and what a patching engine reads of it (no gradients):
        ``(logits, resid, keys, values)``. ``resid[l]`` is the residual stream entering layer
        ``l`` (``blocks.l.hook_resid_pre``), and ``resid[n_layers]`` the last layer's output
        (``hook_resid_post``; at ``positions`` alone when they are given); ``keys[l]`` and
        ``values[l]`` are layer ``l``'s keys and values in TransformerLens' cache layout
        (batch, pos, heads, d_head). With ``stop_at_layer`` the run stops there, as
        ``model(..., stop_at_layer=...)``: ``resid`` then ends with the input of that layer and
        ``logits`` is None. ``positions``: logits at those alone; ``logits=False``: none
        (the unembedding is skipped).
        """
        cfg = self.model.cfg
        w = canonical_params(self.model)
        n, pos = tokens.shape
        end = cfg.n_layers if stop_at_layer is None else stop_at_layer
        x = w["embed.W_E"][tokens] + w["pos_embed.W_pos"][:pos]
        resid, keys, values = [], [], []
        for layer in range(end):
            resid.append(x)
            kv: list[torch.Tensor] = []
            last = positions is not None and layer == cfg.n_layers - 1
            x = self._block(w, f"blocks.{layer}", x, positions if last else None, kv_out=kv)
            keys.append(kv[0])
            values.append(kv[1])
        resid.append(x)
        if stop_at_layer is not None or not logits:
            return None, resid, keys, values
        width = x.shape[1]
        x = self._norm(w, "ln_final", x).reshape(n * width, -1)
        return torch.addmm(w["unembed.b_U"], x, w["unembed.W_U"]).view(n, width, -1), resid, keys, values

    @torch.no_grad()
    def resume(self, resid: torch.Tensor, layer: int, keys: list[torch.Tensor],
               values: list[torch.Tensor], queries: list[int] | None = None) -> torch.Tensor:
        """Logits of a suffix of positions ``p..``, run from ``layer`` on (no gradients).

        ``resid`` (batch, s, d_model) is the residual stream entering ``layer`` at positions
        ``p..p+s-1``; ``keys[i]`` and ``values[i]`` (batch, p, heads, d_head, TransformerLens'
        cache layout) are layer ``layer + i``'s keys and values of the positions before ``p``.
        With ``queries`` (indices into the suffix) the last layer runs its queries, attention
        output, MLP and unembedding there alone: (batch, len(queries), vocab). Equals
        :func:`memlens.backend.run_suffix` to float rounding (tests/training/test_fast_forward.py).
        """
        cfg = self.model.cfg
        w = canonical_params(self.model)
        x = resid
        index = None if queries is None else torch.as_tensor(queries, device=resid.device)
        for i, block in enumerate(range(layer, cfg.n_layers)):
            last = index is not None and block == cfg.n_layers - 1
            prefix = (keys[i].transpose(1, 2), values[i].transpose(1, 2))  # (batch, heads, p, d_head)
            x = self._block(w, f"blocks.{block}", x, index if last else None, prefix)
        n, width = x.shape[:2]
        x = self._norm(w, "ln_final", x).reshape(n * width, -1)
        return torch.addmm(w["unembed.b_U"], x, w["unembed.W_U"]).view(n, width, -1)

    def _block(self, w: dict[str, torch.Tensor], p: str, x: torch.Tensor,
               queries: torch.Tensor | None,
               prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
               kv_out: list[torch.Tensor] | None = None) -> torch.Tensor:
        """One transformer block; with ``queries`` (positions), its output at those alone;
        with ``prefix`` (keys, values of earlier positions), ``x`` is the suffix after them;
        ``kv_out`` receives this block's keys and values (batch, pos, heads, d_head)."""
        cfg = self.model.cfg
        n, pos, _ = x.shape
        heads, d_head = cfg.n_heads, cfg.d_head
        h = self._norm(w, f"{p}.ln1", x)
        # One product for Q, K and V: weights (3, heads, d_model, d_head) -> (d_model, 3*heads*d_head).
        w_qkv = torch.stack([w[f"{p}.attn.W_{c}"] for c in "QKV"]).permute(2, 0, 1, 3).reshape(cfg.d_model, -1)
        b_qkv = torch.stack([w[f"{p}.attn.b_{c}"] for c in "QKV"]).reshape(-1)
        q, k, v = torch.addmm(b_qkv, h.reshape(n * pos, -1), w_qkv).view(n, pos, 3, heads, d_head) \
            .permute(2, 0, 3, 1, 4).unbind(0)  # each (n, heads, pos, d_head)
        if kv_out is not None:  # copies: views would keep the whole QKV product alive
            kv_out.extend((k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()))
        before = 0
        if prefix is not None and prefix[0].shape[2]:
            before = prefix[0].shape[2]
            k, v = torch.cat([prefix[0].to(k.dtype), k], 2), torch.cat([prefix[1].to(v.dtype), v], 2)
        # Query i (absolute position before + i) sees keys 0..before + i.
        mask = torch.ones(pos, before + pos, dtype=torch.bool, device=x.device).triu(before + 1)
        if queries is not None:
            q, mask, x = q[:, :, queries], mask[queries], x[:, queries]
        if x.is_cuda if self.fused_attention is None else self.fused_attention:
            # One fused kernel on the GPU, where the step is bound by kernel launches.
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask, scale=self.scale)
        else:
            # Explicit softmax attention, as TransformerLens computes it: on 2 CPU cores it is
            # 1.4x faster than scaled_dot_product_attention at these sequence lengths.
            scores = (q @ k.transpose(-1, -2) * self.scale).masked_fill(mask, float("-inf"))
            z = scores.softmax(-1) @ v
        width = q.shape[2]
        z = z.transpose(1, 2).reshape(n * width, heads * d_head)
        w_o = w[f"{p}.attn.W_O"].reshape(heads * d_head, cfg.d_model)
        x = x + torch.addmm(w[f"{p}.attn.b_O"], z, w_o).view(n, width, -1)
        h = self._norm(w, f"{p}.ln2", x).reshape(n * width, -1)
        hidden = self.act(torch.addmm(w[f"{p}.mlp.b_in"], h, w[f"{p}.mlp.W_in"]))
        return x + torch.addmm(w[f"{p}.mlp.b_out"], hidden, w[f"{p}.mlp.W_out"]).view(n, width, -1)
