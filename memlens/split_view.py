"""A hooked forward pass with per-head inputs and outputs, over a model's own parameters.

HookedTransformer offers per-head query/key/value inputs and per-head results
(``set_use_split_qkv_input``, ``set_use_attn_result``); the TransformerBridge's native attention
refuses both. Edge attribution patching needs them, so on the bridge
:func:`memlens.backend.split_hooks` hands the circuits code a :class:`SplitView`: a
``HookedRootModule`` that computes the same function from the same parameter tensors
(:func:`memlens.backend.canonical_params`) and fires HookedTransformer's hooks with their names
and shapes when those flags are on:

    hook_embed, hook_pos_embed                        (batch, pos, d_model)
    blocks.L.hook_resid_pre / hook_resid_mid / hook_resid_post / hook_attn_out / hook_mlp_out
    blocks.L.hook_q_input, hook_k_input, hook_v_input (batch, pos, n_heads, d_model)
    blocks.L.attn.hook_result                         (batch, pos, n_heads, d_model)
    blocks.L.hook_mlp_in                              (batch, pos, d_model)

Its activations and gradients equal HookedTransformer's split hooks on the same weights
(tests/test_backend.py, under TransformerLens 3.9).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from transformer_lens.HookedRootModule import HookedRootModule  # kept in TransformerLens 4

from memlens.training.fast_forward import ACTIVATIONS, supports


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.hook_result = HookPoint()


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        for name in ("resid_pre", "q_input", "k_input", "v_input", "attn_out", "resid_mid",
                     "mlp_in", "mlp_out", "resid_post"):
            setattr(self, f"hook_{name}", HookPoint())
        self.attn = _Attn()


class SplitView(HookedRootModule):
    """``SplitView(model)(tokens)`` equals ``model(tokens)``, with per-head hooks.

    >>> from memlens.models import ModelConfig, build_model
    >>> from memlens.tasks import make_task
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=0)
    >>> tokens = task.generate(0).test.tokens[:4]
    >>> torch.allclose(SplitView(model)(tokens), model(tokens), atol=1e-5)
    True
    >>> _, cache = SplitView(model).run_with_cache(tokens)
    >>> tuple(cache["blocks.1.hook_q_input"].shape)
    (4, 10, 2, 32)
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not supports(model):
            raise ValueError("SplitView does not cover this model configuration")
        # Kept out of the module tree: the view owns no parameters and adds no hook points of
        # the model's to its own hook_dict.
        self.__dict__["model"] = model
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(_Block() for _ in range(model.cfg.n_layers))
        self.setup()

    @property
    def cfg(self):
        return self.model.cfg

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)

    def _norm(self, w: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
        kind = self.cfg.normalization_type
        if kind is None:
            return x
        if kind == "LN":
            return F.layer_norm(x, x.shape[-1:], w[f"{prefix}.w"], w[f"{prefix}.b"], eps=self.cfg.eps)
        return F.layer_norm(x, x.shape[-1:], None, None, eps=self.cfg.eps)  # LNPre

    def forward(self, tokens: Tensor, return_type: str | None = "logits") -> Tensor | None:
        from memlens.backend import canonical_params

        cfg = self.cfg
        w = canonical_params(self.model)
        n, pos = tokens.shape
        scale = cfg.attn_scale if cfg.attn_scale and cfg.attn_scale > 0 else math.sqrt(cfg.d_head)
        act = ACTIVATIONS[cfg.act_fn]
        embed = self.hook_embed(w["embed.W_E"][tokens])
        pos_embed = self.hook_pos_embed(w["pos_embed.W_pos"][:pos].expand(n, pos, -1))
        resid = embed + pos_embed
        mask = torch.ones(pos, pos, dtype=torch.bool, device=tokens.device).triu(1)
        for layer, block in enumerate(self.blocks):
            p = f"blocks.{layer}"
            resid = block.hook_resid_pre(resid)
            heads = resid[:, :, None].expand(n, pos, cfg.n_heads, cfg.d_model)
            q_in, k_in, v_in = (hook(heads.clone()) for hook in
                                (block.hook_q_input, block.hook_k_input, block.hook_v_input))
            q, k, v = (torch.einsum("bphd,hde->bphe", self._norm(w, f"{p}.ln1", x), w[f"{p}.attn.W_{c}"])
                       + w[f"{p}.attn.b_{c}"] for x, c in ((q_in, "Q"), (k_in, "K"), (v_in, "V")))
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / scale
            pattern = scores.masked_fill(mask, float("-inf")).softmax(-1)
            z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
            result = block.attn.hook_result(torch.einsum("bqhe,hed->bqhd", z, w[f"{p}.attn.W_O"]))
            attn_out = block.hook_attn_out(result.sum(2) + w[f"{p}.attn.b_O"])
            resid = block.hook_resid_mid(resid + attn_out)
            h = self._norm(w, f"{p}.ln2", block.hook_mlp_in(resid.clone()))
            mlp_out = act(h @ w[f"{p}.mlp.W_in"] + w[f"{p}.mlp.b_in"]) @ w[f"{p}.mlp.W_out"] + w[f"{p}.mlp.b_out"]
            resid = block.hook_resid_post(resid + block.hook_mlp_out(mlp_out))
        if return_type is None:
            return None
        return self._norm(w, "ln_final", resid) @ w["unembed.W_U"] + w["unembed.b_U"]
