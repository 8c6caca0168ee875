"""Synthetic tasks with intermediate results and label noise: FDA (addition) and THR (two-hop)."""

from __future__ import annotations

from typing import Any

from memlens.config import ConfigError, apply_overrides
from memlens.tasks.base import SPLITS, Dataset, Examples
from memlens.tasks.fda import FDAConfig, FDALayout, FDATask
from memlens.tasks.thr import THRConfig, THRTask
from memlens.tasks.tokenizer import MemlensTokenizer

TASKS = {"fda": (FDAConfig, FDATask), "thr": (THRConfig, THRTask)}

Task = FDATask | THRTask


def task_config(name: str, preset: str | None = None, **overrides: Any) -> FDAConfig | THRConfig:
    """The task config of a preset (or the defaults), with field overrides applied.

    >>> task_config("thr", preset="tiny", phi=2.0).phi
    2.0
    """
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is invalid: expected one of {sorted(TASKS)}")
    config_cls = TASKS[name][0]
    if preset is None:
        base = {}
    else:
        from memlens.presets import get_preset

        base = get_preset(name, preset).task
    return apply_overrides(config_cls(**base), overrides) if overrides else config_cls(**base)


def make_task(name: str, preset: str | None = None, **overrides: Any) -> Task:
    """Build a task by name from a preset and overrides.

    >>> task = make_task("fda", preset="tiny", n_train=100)
    >>> task.generate(seed=0).stats["n_train"]
    100
    """
    config = task_config(name, preset, **overrides)
    return TASKS[name][1](config)


def task_from_config(name: str, config: dict[str, Any]) -> Task:
    """Rebuild a task from the dict stored in a run's ``config.json``."""
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is invalid: expected one of {sorted(TASKS)}")
    config_cls, task_cls = TASKS[name]
    from memlens.config import from_dict

    return task_cls(from_dict(config_cls, config))


__all__ = [
    "SPLITS", "TASKS", "Dataset", "Examples", "FDAConfig", "FDALayout", "FDATask",
    "MemlensTokenizer", "THRConfig", "THRTask", "Task", "make_task", "task_config",
    "task_from_config", "task_for", "dataset_for",
]


def task_for(examples: Examples) -> Task:
    """Rebuild the task that generated ``examples`` (from ``examples.origin``)."""
    if not examples.origin:
        raise ConfigError("these Examples carry no origin (task config and seed): pass the task "
                          "explicitly")
    return task_from_config(examples.origin["task"], examples.origin["config"])


def dataset_for(examples: Examples) -> Dataset:
    """Regenerate the whole dataset that ``examples`` came from (same config and seed)."""
    return task_for(examples).generate(examples.origin["seed"])
