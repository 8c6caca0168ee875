"""The baseline for training throughput: the same decoder-only transformer in plain PyTorch.

Same architecture as memlens' ``HookedTransformer`` (learned token and position embeddings,
pre-LayerNorm blocks, causal multi-head attention with biases, a ReLU MLP of width
``d_mlp``, a final LayerNorm and a biased unembedding), written the way a PyTorch user would
write it: no hook points, no TransformerLens. Attention is the explicit softmax(QK^T/sqrt(d))V
that TransformerLens computes, so both do the same arithmetic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.mlp_in, self.mlp_out = nn.Linear(d_model, d_mlp), nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, pos, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(n, pos, 3, self.n_heads, self.d_head).unbind(2)
        scores = torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(self.d_head)
        pattern = scores.masked_fill(mask, float("-inf")).softmax(-1)
        z = torch.einsum("nhqk,nkhd->nqhd", pattern, v).reshape(n, pos, d)
        x = x + self.out(z)
        return x + self.mlp_out(F.relu(self.mlp_in(self.ln2(x))))


class PlainTransformer(nn.Module):
    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_mlp: int, n_ctx: int,
                 d_vocab: int):
        super().__init__()
        self.embed, self.pos_embed = nn.Embedding(d_vocab, d_model), nn.Embedding(n_ctx, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_mlp) for _ in range(n_layers))
        self.ln_final, self.unembed = nn.LayerNorm(d_model), nn.Linear(d_model, d_vocab)
        self.register_buffer("mask", torch.ones(n_ctx, n_ctx, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = tokens.shape[1]
        x = self.embed(tokens) + self.pos_embed.weight[:pos]
        for block in self.blocks:
            x = block(x, self.mask[:pos, :pos])
        return self.unembed(self.ln_final(x))


def plain_model_for(hooked_model) -> PlainTransformer:
    """A :class:`PlainTransformer` with the sizes of a ``HookedTransformer``'s config."""
    cfg = hooked_model.cfg
    return PlainTransformer(cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.n_ctx, cfg.d_vocab)
