"""Memorization metrics and the phase summary.

Accuracy is exact match of the whole answer. Teacher-forced argmax over the answer positions is
used: it equals greedy decoding, because greedy decoding produces the same tokens exactly when
every teacher-forced argmax already matches the target.

* ``train_clean_acc``: clean training examples answered with their label.
* ``noisy_memorized_acc``: noisy training examples answered with their (wrong) noisy label.
* ``noisy_true_acc``: noisy training examples answered with their true label.
* ``test_acc``: held-out clean examples answered correctly.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from memlens.tasks.base import Examples
from memlens.training.fast_forward import FastForward


def _is_fast_forward(model) -> bool:
    """Whether ``model`` is a FastForward, possibly inside DistributedDataParallel (``.module``)
    or ``torch.compile`` (``._orig_mod``), which pass keyword arguments through."""
    while not isinstance(model, FastForward):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return False
        model = inner
    return True


def answer_logits(model, tokens: Int[Tensor, "n pos"],
                  answer_pos: Int[Tensor, " answer_len"]) -> Float[Tensor, "n answer_len vocab"]:
    """The model's logits at the answer-predicting positions (a :class:`FastForward` computes
    its last layer at those positions alone)."""
    if _is_fast_forward(model):
        return model(tokens, positions=answer_pos)
    return model(tokens, return_type="logits")[:, answer_pos]


def answer_loss(logits: Float[Tensor, "n answer_len vocab"],
                targets: Int[Tensor, "n answer_len"]) -> Tensor:
    """Mean cross-entropy over answer tokens (the loss is on answer tokens only)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def with_answer(examples: Examples, answer: Int[Tensor, "n answer_len"]) -> Int[Tensor, "n pos"]:
    """The examples' tokens with ``answer`` teacher-forced in the answer slots."""
    tokens = examples.tokens.clone()
    tokens[:, examples.answer_token_pos] = answer
    return tokens


@torch.no_grad()
def predict(model, examples: Examples, target: str = "labels",
            batch_size: int = 4096) -> tuple[Tensor, Tensor]:
    """Teacher-forced argmax answers and per-example losses, with ``target`` in the answer slots.

    ``target`` is ``"labels"`` or ``"true_labels"``. The argmax equals ``target`` at every answer
    position exactly when greedy decoding would produce ``target``, so scoring a noisy example
    against its true label must teacher-force the true label, not the noisy one.
    """
    preds, losses = [], []
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        answer = getattr(batch, target)
        tokens = with_answer(batch, answer) if target != "labels" else batch.tokens
        tokens = tokens[:, : int(batch.answer_pos.max()) + 1]  # later positions reach no answer
        logits = answer_logits(model, tokens.to(device), batch.answer_pos.to(device)).float()
        preds.append(logits.argmax(-1).cpu())
        logp = logits.log_softmax(-1).cpu()
        losses.append(-logp.gather(-1, answer[..., None])[..., 0].mean(-1))
    return torch.cat(preds), torch.cat(losses)


def _accuracy(model, examples: Examples, target: str, batch_size: int) -> tuple[float, float]:
    """Exact-match accuracy and mean loss against ``target``; NaN for an empty split."""
    if len(examples) == 0:
        return float("nan"), float("nan")
    preds, losses = predict(model, examples, target, batch_size)
    hit = (preds == getattr(examples, target)).all(-1).float()
    return float(hit.mean()), float(losses.mean())


def evaluate(model, splits: Mapping[str, Examples], batch_size: int = 4096) -> dict[str, float]:
    """The four accuracies and their losses on ``train_clean``, ``train_noisy`` and ``test``.

    A split with no examples (no noise, say) gives NaN for its metrics; other split names give
    ``<name>_acc`` and ``<name>_loss``.
    """
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for name, examples in splits.items():
            if name == "train_noisy":
                out["noisy_memorized_acc"], out["noisy_memorized_loss"] = _accuracy(
                    model, examples, "labels", batch_size)
                out["noisy_true_acc"], out["noisy_true_loss"] = _accuracy(
                    model, examples, "true_labels", batch_size)
            else:
                prefix = {"train_clean": "train_clean", "test": "test"}.get(name, name)
                out[f"{prefix}_acc"], out[f"{prefix}_loss"] = _accuracy(model, examples, "labels", batch_size)
    finally:
        model.train(was_training)
    return out


def first_step(metrics: pd.DataFrame, column: str, threshold: float) -> int | None:
    """The first evaluated step where ``column`` reaches ``threshold`` (None if never)."""
    hit = metrics[metrics[column] >= threshold]
    return None if hit.empty else int(hit["step"].iloc[0])


def phase_summary(metrics: pd.DataFrame, test_threshold: float = 0.9,
                  memorized_thresholds: tuple[float, float] = (0.5, 0.9)) -> dict:
    """When the model generalized and when it memorized the noise.

    ``generalized_first`` is True when test accuracy reached ``test_threshold`` strictly before
    noisy memorization reached the first memorization threshold (generalize first, memorize later).

    >>> df = pd.DataFrame({"step": [0, 100, 200, 300], "test_acc": [0, .95, .96, .96],
    ...                    "noisy_memorized_acc": [0, 0, .6, .95]})
    >>> phase_summary(df)["generalized_first"]
    True
    """
    low, high = memorized_thresholds
    test_step = first_step(metrics, "test_acc", test_threshold)
    mem_low = first_step(metrics, "noisy_memorized_acc", low)
    mem_high = first_step(metrics, "noisy_memorized_acc", high)
    return {
        f"step_test_acc_{test_threshold}": test_step,
        f"step_noisy_memorized_{low}": mem_low,
        f"step_noisy_memorized_{high}": mem_high,
        "generalized_first": test_step is not None and (mem_low is None or test_step < mem_low),
    }
