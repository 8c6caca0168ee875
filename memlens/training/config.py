"""Training configuration and the full run configuration (task + model + training)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from memlens.config import ConfigError, require, require_choice, require_int, require_number
from memlens.models import ModelConfig
from memlens.presets import get_preset
from memlens.tasks import TASKS, task_config

SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class TrainConfig:
    """AdamW with linear warmup and a schedule; answer-only loss; evaluation cadence.

    Evaluation runs at ``eval_log_points`` log-spaced steps (dense early, where the first phase
    happens), at every multiple of ``eval_every``, and at the last step, on a fixed seeded subset
    of at most ``eval_max_per_split`` examples per split (all of a smaller split), so that
    evaluation stays a small share of training time. Weights are checkpointed
    at ``checkpoint_log_points`` log-spaced evaluation steps and at the end.

    >>> TrainConfig(steps=1000, eval_every=250).eval_steps()[:6]
    [0, 1, 2, 3, 4, 6]
    """

    steps: int = 4_000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.98
    eval_every: int = 250
    eval_log_points: int = 16
    eval_max_per_split: int = 2_000
    eval_batch_size: int = 4_096
    checkpoint_log_points: int = 8
    resume_every: int = 250
    # "bf16": the training forward pass runs under bfloat16 autocast (weights, optimizer state
    # and evaluation stay float32); "auto": bf16 on a CPU that multiplies bf16 matrices natively
    # (where it is ~1.6x faster), fp32 elsewhere (on a GPU these small models are bound by kernel
    # launches and autocast's casts make them slower). See docs/decisions.md.
    precision: str = "fp32"
    # Compile the training step with torch.compile (analyses always run the eager, hooked model).
    compile: bool = False
    # Train through memlens.training.fast_forward (the same function and parameters as the
    # model, fused, without hooks); false trains through the hooked model itself.
    fast_forward: bool = True

    def __post_init__(self) -> None:
        require_int(self.steps, "steps", 1)
        require_int(self.batch_size, "batch_size", 1)
        require_number(self.lr, "lr", 0.0, None, low_open=True)
        require_number(self.weight_decay, "weight_decay", 0.0)
        require_int(self.warmup_steps, "warmup_steps", 0)
        require_choice(self.schedule, "schedule", SCHEDULES)
        require_number(self.min_lr_ratio, "min_lr_ratio", 0.0, 1.0)
        require_number(self.grad_clip, "grad_clip", 0.0)
        require_number(self.beta1, "beta1", 0.0, 1.0, high_open=True)
        require_number(self.beta2, "beta2", 0.0, 1.0, high_open=True)
        require_int(self.eval_every, "eval_every", 1)
        require_int(self.eval_log_points, "eval_log_points", 0)
        require_int(self.eval_max_per_split, "eval_max_per_split", 1)
        require_int(self.eval_batch_size, "eval_batch_size", 1)
        require_int(self.checkpoint_log_points, "checkpoint_log_points", 0)
        require_int(self.resume_every, "resume_every", 1)
        require_choice(self.precision, "precision", PRECISIONS)
        require(isinstance(self.compile, bool), "compile", self.compile, "true or false")
        require(isinstance(self.fast_forward, bool), "fast_forward", self.fast_forward, "true or false")

    def lr_at(self, step: int) -> float:
        """Learning rate for the update that ends at ``step + 1`` (0-based update index)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.schedule == "cosine":
            factor = 0.5 * (1 + math.cos(math.pi * progress))
        else:
            factor = 1 - progress
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * factor)

    def _log_steps(self, points: int) -> set[int]:
        if points <= 0:
            return set()
        return {int(round(s)) for s in np.geomspace(1, self.steps, points)}

    def eval_steps(self) -> list[int]:
        """Steps (updates done) after which the model is evaluated; 0 is the initialization."""
        steps = {0, self.steps} | self._log_steps(self.eval_log_points)
        steps |= set(range(self.eval_every, self.steps + 1, self.eval_every))
        return sorted(steps)

    def checkpoint_steps(self) -> list[int]:
        """Log-spaced evaluation steps whose weights are kept, plus the last step."""
        evals = np.array(self.eval_steps()[1:])
        keep = {self.steps}
        for target in self._log_steps(self.checkpoint_log_points):
            keep.add(int(evals[np.abs(np.log(evals) - np.log(target)).argmin()]))
        return sorted(keep)


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to rebuild the task, tokenizer, model and training of a run."""

    task: str
    preset: str
    seed: int
    task_config: dict[str, Any]
    model: ModelConfig
    train: TrainConfig

    def __post_init__(self) -> None:
        require_choice(self.task, "task", sorted(TASKS))
        require_int(self.seed, "seed", 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "preset": self.preset, "seed": self.seed,
            "task_config": dict(self.task_config), "model": asdict(self.model),
            "train": asdict(self.train),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        from memlens.config import from_dict

        try:
            # A field missing from a stored config means the behaviour from before it existed.
            train = {**_LEGACY_TRAIN_DEFAULTS, **data["train"]}
            return cls(
                task=data["task"], preset=data["preset"], seed=data["seed"],
                task_config=dict(data["task_config"]),
                model=from_dict(ModelConfig, data["model"]),
                train=from_dict(TrainConfig, train),
            )
        except KeyError as err:
            raise ConfigError(f"run config is missing the field {err}") from None

    def experiment_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the fields that say how to compute, not what to compute
        (``train.compile``, ``train.fast_forward``), and without later-added fields that hold
        their old-behaviour value. Two runs with equal experiment dicts are the same experiment.
        """
        data = self.to_dict()
        for name in IMPLEMENTATION_FIELDS:
            data["train"].pop(name, None)
        for name, legacy in _LEGACY_TRAIN_DEFAULTS.items():
            if data["train"].get(name) == legacy:
                del data["train"][name]
        return data

    def fingerprint(self) -> str:
        """A short hash of :meth:`experiment_dict`; checkpoints carry it to detect mismatches
        (runs written before a field existed keep their fingerprint)."""
        return hashlib.sha256(json.dumps(self.experiment_dict(), sort_keys=True).encode()).hexdigest()[:16]


# Training fields added after runs were first written, with the value that means "as before".
_LEGACY_TRAIN_DEFAULTS = {"precision": "fp32", "compile": False, "fast_forward": False}
# Training fields that change how a step is computed, not the experiment (floating-point
# rounding aside): a run may be resumed with other values.
IMPLEMENTATION_FIELDS = ("compile", "fast_forward")


def make_run_config(task: str, preset: str = "small", seed: int = 0,
                    overrides: dict[str, Any] | None = None) -> RunConfig:
    """A validated run config from a preset and ``{"section.field": value}`` overrides.

    >>> cfg = make_run_config("fda", "tiny", seed=1, overrides={"train.steps": "50"})
    >>> cfg.train.steps, cfg.task_config["n_digits"]
    (50, 2)
    """
    from memlens.config import apply_overrides

    preset_obj = get_preset(task, preset).with_overrides(overrides or {})
    tcfg = task_config(task, None, **preset_obj.task)
    model = apply_overrides(ModelConfig(), preset_obj.model)
    train = apply_overrides(TrainConfig(), preset_obj.train)
    return RunConfig(task=task, preset=preset, seed=seed, task_config=asdict(tcfg), model=model,
                     train=train)
