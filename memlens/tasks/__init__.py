"""Synthetic tasks with intermediate results and label noise: FDA (addition) and THR (two-hop).

Every task follows the protocol of :mod:`memlens.tasks.protocol` (docs/tasks.md); ``TASKS`` maps
a name to its (config class, task class), and :func:`register_task` adds one.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from memlens.config import ConfigError, apply_overrides
from memlens.tasks.base import SPLITS, Dataset, Examples
from memlens.tasks.fda import FDAConfig, FDALayout, FDATask
from memlens.tasks.modadd import ModAddConfig, ModAddTask
from memlens.tasks.protocol import (
    CounterfactualPairs, Intermediate, MatchedPairs, Neighbours, TaskBase, TaskError,
)
from memlens.tasks.thr import THRConfig, THRTask
from memlens.tasks.tokenizer import MemlensTokenizer

TASKS: dict[str, tuple[type, type]] = {"fda": (FDAConfig, FDATask), "thr": (THRConfig, THRTask),
                                       "modadd": (ModAddConfig, ModAddTask)}

Task = TaskBase


def register_task(name: str, config_cls: type, task_cls: type, presets: dict | None = None) -> None:
    """Make a task available by name to ``make_task``, run directories and the command line.

    ``config_cls`` is a frozen dataclass that validates itself; ``task_cls(config)`` follows
    :class:`~memlens.tasks.protocol.TaskBase`; ``presets`` maps a preset name (``tiny``,
    ``small``, ...) to a :class:`~memlens.presets.Preset`. Registering a name again replaces it.
    For the command line, list the module that registers it in ``MEMLENS_TASK_MODULES``.
    """
    if not (isinstance(task_cls, type) and issubclass(task_cls, TaskBase)):
        raise TypeError(f"{task_cls!r} must be a class deriving from memlens.tasks.TaskBase")
    TASKS[name] = (config_cls, task_cls)
    if presets:
        from memlens.presets import register_presets

        register_presets(name, presets)


TASK_MODULES_ENV = "MEMLENS_TASK_MODULES"


def load_task_modules() -> list[str]:
    """Import the modules named in ``MEMLENS_TASK_MODULES`` (comma-separated module names or
    ``.py`` paths), which register tasks; returns what was imported. A module that cannot be
    found is an error naming it."""
    import importlib
    import importlib.util
    import os
    import sys

    loaded = []
    for item in filter(None, (x.strip() for x in os.environ.get(TASK_MODULES_ENV, "").split(","))):
        if item.endswith(".py"):
            name = os.path.splitext(os.path.basename(item))[0]
            if name in sys.modules:
                loaded.append(name)
                continue
            spec = importlib.util.spec_from_file_location(name, item)
            if spec is None or not os.path.exists(item):
                raise ConfigError(f"{TASK_MODULES_ENV}: {item!r} is not a file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(item)
            except ImportError as err:
                raise ConfigError(f"{TASK_MODULES_ENV}: cannot import {item!r} ({err})") from None
        loaded.append(item)
    return loaded


def _known(name: str) -> None:
    if name not in TASKS:
        load_task_modules()
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is invalid: expected one of {sorted(TASKS)} (a task of "
                          f"your own: register it, or name its module in {TASK_MODULES_ENV})")


def task_config(name: str, preset: str | None = None, **overrides: Any) -> Any:
    """The task config of a preset (or the defaults), with field overrides applied.

    >>> task_config("thr", preset="tiny", phi=2.0).phi
    2.0
    """
    _known(name)
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
    _known(name)
    config_cls, task_cls = TASKS[name]
    from memlens.config import from_dict

    return task_cls(from_dict(config_cls, config))


__all__ = [
    "SPLITS", "TASKS", "CounterfactualPairs", "Dataset", "Examples", "FDAConfig", "FDALayout",
    "FDATask", "Intermediate", "MatchedPairs", "MemlensTokenizer", "ModAddConfig", "ModAddTask",
    "Neighbours", "THRConfig",
    "THRTask", "Task", "TaskBase", "TaskError", "dataset_for", "make_task", "register_task",
    "task_config", "task_from_config", "task_for", "load_task_modules",
]


def task_for(examples: Examples) -> Task:
    """Rebuild the task that generated ``examples`` (from ``examples.origin``)."""
    if not examples.origin:
        raise ConfigError("these Examples carry no origin (task config and seed): pass the task "
                          "explicitly")
    return task_from_config(examples.origin["task"], examples.origin["config"])


def dataset_for(examples: Examples) -> Dataset:
    """Regenerate the whole dataset that ``examples`` came from (same config and seed); the
    last few are cached, since recipes and analyses ask for the same one many times."""
    task_for(examples)  # refuses Examples without an origin
    origin = examples.origin
    return _generate(origin["task"], json.dumps(origin["config"], sort_keys=True), origin["seed"])


@functools.lru_cache(maxsize=4)
def _generate(name: str, config_json: str, seed: int) -> Dataset:
    return task_from_config(name, json.loads(config_json)).generate(seed)
