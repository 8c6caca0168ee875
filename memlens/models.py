"""Model configuration and construction: presets become a TransformerLens ``HookedTransformer``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from memlens.config import require, require_choice, require_int


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer, sized for the task; ``d_mlp`` defaults to ``4 * d_model``.

    >>> ModelConfig(n_layers=2, d_model=128, n_heads=4).d_head
    32
    """

    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int | None = None
    act_fn: str = "relu"
    normalization_type: str | None = "LN"

    def __post_init__(self) -> None:
        require_int(self.n_layers, "n_layers", 1)
        require_int(self.d_model, "d_model", 1)
        require_int(self.n_heads, "n_heads", 1)
        require(self.d_model % self.n_heads == 0, "n_heads", self.n_heads,
                f"a divisor of d_model={self.d_model}")
        if self.d_mlp is not None:
            require_int(self.d_mlp, "d_mlp", 1)
        require_choice(self.act_fn, "act_fn", ("relu", "gelu", "gelu_new", "silu"))
        require_choice(self.normalization_type, "normalization_type", ("LN", "LNPre", None))

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


def hooked_config(model: ModelConfig, n_ctx: int, d_vocab: int, seed: int,
                  device: str = "cpu") -> HookedTransformerConfig:
    """The ``HookedTransformerConfig`` for a model config and a task's sequence and vocabulary."""
    return HookedTransformerConfig(
        n_layers=model.n_layers,
        d_model=model.d_model,
        n_heads=model.n_heads,
        d_head=model.d_head,
        d_mlp=model.d_mlp or 4 * model.d_model,
        act_fn=model.act_fn,
        normalization_type=model.normalization_type,
        n_ctx=n_ctx,
        d_vocab=d_vocab,
        seed=seed,
        device=device,
        default_prepend_bos=True,
    )


def build_model(model: ModelConfig, task, seed: int, device: str = "cpu") -> HookedTransformer:
    """A freshly initialized ``HookedTransformer`` for ``task``, with its tokenizer attached.

    >>> from memlens.tasks import make_task
    >>> task = make_task("fda", preset="tiny")
    >>> net = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> net.to_str_tokens("1 2 + 3 4 =")[:3]
    ['<bos>', '1', '2']
    """
    cfg = hooked_config(model, n_ctx=task.seq_len, d_vocab=len(task.tokenizer), seed=seed, device=device)
    with warnings.catch_warnings():
        # TransformerLens 3.9 marks HookedTransformer as deprecated in favour of TransformerBridge,
        # which wraps Hugging Face models; training from scratch needs HookedTransformer.
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated",
                                category=DeprecationWarning)
        net = HookedTransformer(cfg, tokenizer=task.tokenizer.to_hf(), move_to_device=False)
    return net.to(torch.device(device), print_details=False)

