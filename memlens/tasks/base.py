"""The batch every analysis takes (:class:`Examples`) and the dataset a task generates.

Sequence convention, shared by all tasks: ``tokens[:, 0]`` is ``<bos>``; the prompt follows; the
answer tokens sit at the end. The logits at position ``p`` predict the token at ``p + 1``, so
``answer_pos`` holds the positions whose logits predict the answer tokens, i.e. the answer tokens
themselves are at ``answer_pos + 1``. Training is teacher-forced on ``labels``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

SPLITS = ("train_clean", "train_noisy", "test")


@dataclass
class Examples:
    """A batch of task examples with their labels, noise flags and intermediate results.

    ``labels`` is the trained target (the noisy label where ``is_noisy``); ``true_labels`` is
    always correct. ``origin`` (``{"task", "config", "seed"}``, set by the generator, not part of
    the content hash) lets analyses rebuild the task and its data. ``intermediates`` maps a name (``column_sum``, ``carry``, ``bridge_entity``,
    ...) to a tensor whose first dimension is the example. Indexing gives :class:`Examples`:

    >>> from memlens.tasks import make_task
    >>> data = make_task("fda", preset="tiny").generate(seed=0)
    >>> batch = data.train[:4]
    >>> len(batch), batch.tokens.shape[1] == data.train.tokens.shape[1]
    (4, True)
    """

    tokens: Int[Tensor, "n pos"]
    answer_pos: Int[Tensor, " answer_len"]
    labels: Int[Tensor, "n answer_len"]
    true_labels: Int[Tensor, "n answer_len"]
    is_noisy: Bool[Tensor, " n"]
    intermediates: dict[str, Tensor] = field(default_factory=dict)
    task_name: str = ""
    origin: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        if self.tokens.ndim != 2:
            raise ValueError(f"tokens must be 2-D (n, pos), got shape {tuple(self.tokens.shape)}")
        for name in ("labels", "true_labels"):
            shape = tuple(getattr(self, name).shape)
            if shape != (n, len(self.answer_pos)):
                raise ValueError(f"{name} has shape {shape}, expected {(n, len(self.answer_pos))}")
        if tuple(self.is_noisy.shape) != (n,):
            raise ValueError(f"is_noisy has shape {tuple(self.is_noisy.shape)}, expected {(n,)}")
        for name, value in self.intermediates.items():
            if value.shape[0] != n:
                raise ValueError(f"intermediate {name!r} has {value.shape[0]} rows, expected {n}")
        if len(self.answer_pos) and int(self.answer_pos.max()) + 1 >= self.tokens.shape[1]:
            raise ValueError(f"answer_pos {self.answer_pos.tolist()} exceeds the sequence length")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: Any) -> "Examples":
        if isinstance(index, (int, np.integer)):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"index {index} out of range for {n} examples")
            index = slice(index, index + 1 if index != -1 else None)
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return Examples(
            tokens=self.tokens[index],
            answer_pos=self.answer_pos,
            labels=self.labels[index],
            true_labels=self.true_labels[index],
            is_noisy=self.is_noisy[index],
            intermediates={k: v[index] for k, v in self.intermediates.items()},
            task_name=self.task_name,
            origin=self.origin,
        )

    @property
    def answer_token_pos(self) -> Int[Tensor, " answer_len"]:
        """Positions of the answer tokens themselves (``answer_pos + 1``)."""
        return self.answer_pos + 1

    def to(self, device: str | torch.device) -> "Examples":
        return Examples(
            tokens=self.tokens.to(device),
            answer_pos=self.answer_pos.to(device),
            labels=self.labels.to(device),
            true_labels=self.true_labels.to(device),
            is_noisy=self.is_noisy.to(device),
            intermediates={k: v.to(device) for k, v in self.intermediates.items()},
            task_name=self.task_name,
            origin=self.origin,
        )

    @staticmethod
    def concat(parts: list["Examples"]) -> "Examples":
        """Stack batches of the same task and layout along the example dimension."""
        if not parts:
            raise ValueError("concat needs at least one Examples")
        first = parts[0]
        for p in parts[1:]:
            if p.task_name != first.task_name or not torch.equal(p.answer_pos, first.answer_pos):
                raise ValueError("cannot concat Examples of different tasks or layouts")
            if set(p.intermediates) != set(first.intermediates):
                raise ValueError("cannot concat Examples with different intermediates")
        return Examples(
            tokens=torch.cat([p.tokens for p in parts]),
            answer_pos=first.answer_pos,
            labels=torch.cat([p.labels for p in parts]),
            true_labels=torch.cat([p.true_labels for p in parts]),
            is_noisy=torch.cat([p.is_noisy for p in parts]),
            intermediates={k: torch.cat([p.intermediates[k] for p in parts]) for k in first.intermediates},
            task_name=first.task_name,
            origin=first.origin if all(p.origin == first.origin for p in parts) else None,
        )

    def content_hash(self) -> str:
        """SHA-256 over every tensor's bytes: the same data gives the same hash."""
        digest = hashlib.sha256()
        tensors: list[tuple[str, Tensor]] = [
            ("tokens", self.tokens), ("answer_pos", self.answer_pos), ("labels", self.labels),
            ("true_labels", self.true_labels), ("is_noisy", self.is_noisy),
        ]
        tensors += [(f"intermediates.{k}", v) for k, v in sorted(self.intermediates.items())]
        for name, tensor in tensors:
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


@dataclass
class Dataset:
    """What a task generates: the training set (clean and noisy together) and the clean test set."""

    train: Examples
    test: Examples
    task_name: str
    seed: int
    stats: Mapping[str, Any] = field(default_factory=dict)
    task_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.train.origin = self.test.origin = {
            "task": self.task_name, "config": dict(self.task_config), "seed": self.seed}

    @property
    def splits(self) -> dict[str, Examples]:
        """``train_clean``, ``train_noisy`` and ``test`` as :class:`Examples`."""
        noisy = self.train.is_noisy
        return {
            "train_clean": self.train[~noisy],
            "train_noisy": self.train[noisy],
            "test": self.test,
        }

    @property
    def content_hash(self) -> str:
        """One hash over train and test: the dataset's identity in run directories."""
        return hashlib.sha256(
            (self.train.content_hash() + self.test.content_hash()).encode()
        ).hexdigest()
