"""Model configuration and construction: presets become a TransformerLens model."""

from __future__ import annotations

from dataclasses import dataclass

from memlens import backend
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


def build_model(model: ModelConfig, task, seed: int, device: str = "cpu"):
    """A freshly initialized model for ``task``, with its tokenizer attached: a
    ``HookedTransformer`` on TransformerLens 3.x, a ``TransformerBridge`` on 4.x (the choice is
    :mod:`memlens.backend`'s; docs/backends.md).

    >>> from memlens.tasks import make_task
    >>> task = make_task("fda", preset="tiny")
    >>> net = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> net.to_str_tokens("1 2 + 3 4 =")[:3]
    ['<bos>', '1', '2']
    """
    return backend.build(
        n_layers=model.n_layers, d_model=model.d_model, n_heads=model.n_heads, d_head=model.d_head,
        d_mlp=model.d_mlp or 4 * model.d_model, act_fn=model.act_fn,
        normalization_type=model.normalization_type, n_ctx=task.seq_len,
        d_vocab=len(task.tokenizer), seed=seed, tokenizer=task.tokenizer.to_hf(), device=device,
    )
