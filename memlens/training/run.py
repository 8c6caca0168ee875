"""The run directory: what training writes and every analysis reads.

    RUN/config.json            run config (task, model, training), dataset hash, versions
    RUN/tokenizer.json         the word-level tokenizer
    RUN/metrics.jsonl          one JSON object per evaluation step
    RUN/checkpoints/step_NNNNNNN.safetensors   log-spaced weights
    RUN/checkpoints/resume.safetensors         latest weights + AdamW state (for --resume)
    RUN/checkpoints/pre_memorization.safetensors   the last evaluated weights with noisy recall < 0.1
    RUN/final.safetensors      final weights (present once training finished)
    (weights in HookedTransformer's layout on every TransformerLens version: memlens.backend)
    RUN/summary.json           final metrics, phase summary, wall time (present once finished)
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from memlens.config import ConfigError
from memlens.io import atomic_write_json, atomic_write_text
from memlens.tasks import Dataset, Examples, MemlensTokenizer, task_from_config
from memlens.training.config import RunConfig

CONFIG, TOKENIZER, METRICS, FINAL, SUMMARY = (
    "config.json", "tokenizer.json", "metrics.jsonl", "final.safetensors", "summary.json"
)
CHECKPOINTS = "checkpoints"
RESUME = "resume.safetensors"
PRE_MEMORIZATION = "pre_memorization.safetensors"
PRE_MEMORIZATION_RECALL = 0.1


class RunDirError(RuntimeError):
    """A run directory is missing files, holds another run, or cannot be used as asked."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step_{step:07d}.safetensors"


def versions() -> dict[str, str]:
    import torch

    import memlens
    from memlens import backend

    return {
        "memlens": memlens.__version__, "torch": torch.__version__,
        "transformer_lens": backend.TL_VERSION, "model_class": backend.MODEL_CLASS,
        "python": platform.python_version(),
    }


HEADER_KEYS = ("task", "task_config", "model", "train", "seed")


def read_header(run_dir: str | os.PathLike) -> dict:
    """``RUN/config.json``, checked: readable JSON with a ``run`` section that has
    ``HEADER_KEYS``. Every problem is a :class:`RunDirError` naming the file."""
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise RunDirError(f"{run_dir} is not a memlens run directory (no {CONFIG})")
    try:
        header = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunDirError(f"{path} is corrupted ({err})") from None
    run = header.get("run") if isinstance(header, dict) else None
    missing = [k for k in HEADER_KEYS if not isinstance(run, dict) or k not in run]
    if missing:
        raise RunDirError(f"{path} lacks {'its run section' if run is None else ', '.join(missing)}: "
                          "not a config written by `memlens train`")
    return header


def read_summary(run_dir: str | os.PathLike) -> dict:
    """``RUN/summary.json`` (written when training finished); ``{}`` if absent, a
    :class:`RunDirError` naming the file if unreadable."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunDirError(f"{path} is corrupted ({err}); rerun `memlens train ... --resume`") from None


def prepare_run_dir(run_dir: Path, config: RunConfig, resume: bool) -> bool:
    """Check ``run_dir`` before any work; returns True when an existing run is to be continued.

    Refuses a directory that holds a different run, one that holds this run without
    ``resume`` (never overwrite silently), and a non-empty directory that is not a run.
    """
    if not run_dir.exists() or not any(run_dir.iterdir()):
        if resume:
            raise RunDirError(f"--resume given but {run_dir} holds no run to continue")
        return False
    config_file = run_dir / CONFIG
    if not config_file.exists():
        raise RunDirError(f"{run_dir} is not empty and is not a memlens run directory "
                          f"(no {CONFIG}); choose another --out")
    try:
        stored = read_header(run_dir)["run"]
    except RunDirError as err:
        raise RunDirError(f"{err}; choose another --out") from None
    try:
        stored_experiment = RunConfig.from_dict(stored).experiment_dict()
    except ConfigError as err:
        raise RunDirError(f"{config_file} holds an invalid run config ({err}); choose another --out") from None
    new = config.experiment_dict()
    if stored_experiment != new:
        diffs = differing_keys(stored_experiment, new)
        raise RunDirError(f"{run_dir} holds a different run (differs in {', '.join(diffs)}); "
                          "choose another --out")
    if not resume:
        state = "a finished run" if (run_dir / FINAL).exists() else "an unfinished run"
        raise RunDirError(f"{run_dir} already holds {state} of this config; pass --resume to "
                          "continue it, or choose another --out")
    return True


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix[:-1]} ({a!r} vs {b!r})"]


def write_run_header(run_dir: Path, config: RunConfig, dataset: Dataset, tokenizer: MemlensTokenizer,
                     device: str, precision: str | None = None) -> None:
    """config.json and tokenizer.json, written before training starts. ``precision``: what
    ``train.precision`` resolved to on this machine (``auto`` is bf16 or fp32)."""
    (run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / CONFIG, {
        "run": config.to_dict(), "dataset_hash": dataset.content_hash,
        "dataset_stats": dict(dataset.stats), "versions": versions(), "device": device,
        "precision": precision or config.train.precision, "fingerprint": config.fingerprint(),
    })
    tokenizer.save(run_dir / TOKENIZER)


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise RunDirError(f"{path} line {n} is not valid JSON") from None
    return rows


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """Rewrite metrics.jsonl atomically (it holds a few dozen lines)."""
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


@dataclass
class Run:
    """A trained run: model, task, tokenizer, data splits and metrics.

    Load one with :func:`load_run`. ``splits`` holds ``train_clean``, ``train_noisy`` and
    ``test`` as :class:`~memlens.tasks.Examples`.
    """

    path: Path
    config: RunConfig
    task: Any
    tokenizer: MemlensTokenizer
    model: Any
    dataset: Dataset
    metrics: pd.DataFrame
    summary: dict = field(default_factory=dict)

    @property
    def splits(self) -> dict[str, Examples]:
        return self.dataset.splits

    def load_model(self, checkpoint: str | int):
        """Another checkpoint of this run as a model on the same device (``"pre_memorization"``,
        ``"final"``, ``"resume"`` or a kept step); a missing file is a :class:`RunDirError`."""
        from memlens import backend
        from memlens.models import build_model
        from memlens.training.checkpoint import load_weights

        weights = _weights_path(self.path, checkpoint)
        if not weights.exists():
            raise RunDirError(f"{self.path} has no {checkpoint} checkpoint ({weights.name})")
        model = _model_from(weights, self.config, self.task)
        return backend.to_device(model, next(self.model.parameters()).device).eval()


def _model_from(weights: Path, config: RunConfig, task):
    """A model of ``config`` with ``weights`` loaded; an unreadable file is a RunDirError."""
    from memlens.models import build_model
    from memlens.training.checkpoint import CheckpointError, load_weights

    model = build_model(config.model, task, seed=config.seed, device="cpu")
    try:
        load_weights(weights, model, fingerprint=config.fingerprint())
    except CheckpointError as err:
        raise RunDirError(str(err)) from None
    return model


def _weights_path(run_dir: Path, checkpoint: str | int) -> Path:
    if checkpoint == "final":
        return run_dir / FINAL
    if checkpoint == "resume":
        return run_dir / CHECKPOINTS / RESUME
    if checkpoint == "pre_memorization":
        return run_dir / CHECKPOINTS / PRE_MEMORIZATION
    if isinstance(checkpoint, int) and not isinstance(checkpoint, bool):
        return checkpoint_path(run_dir, checkpoint)
    raise ConfigError(f"checkpoint={checkpoint!r} is invalid: expected 'final', 'resume', "
                      "'pre_memorization' or a step")


def load_run(path: str | os.PathLike, checkpoint: str | int = "final", device: str = "cpu") -> Run:
    """Load a run directory written by ``memlens train``.

    ``checkpoint`` is ``"final"``, ``"resume"`` (the latest state of an unfinished run),
    ``"pre_memorization"`` (the last evaluated state with noisy recall below 0.1) or a step
    number of a kept checkpoint. The dataset is regenerated from the config and checked
    against the recorded hash. Nothing is unpickled.

    >>> from memlens.training import train, make_run_config   # doctest: +SKIP
    >>> run = load_run("runs/fda-small-s0")                     # doctest: +SKIP
    >>> run.model.cfg.n_layers, len(run.splits["train_noisy"])  # doctest: +SKIP
    (2, 500)
    """
    from memlens import backend
    from memlens.models import build_model
    from memlens.training.checkpoint import load_weights

    run_dir = Path(path)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    weights = _weights_path(run_dir, checkpoint)
    missing = [p.name for p in (run_dir / CONFIG, run_dir / TOKENIZER, run_dir / METRICS, weights)
               if not p.exists()]
    if missing:
        hint = " (training has not finished: pass --resume to continue it)" if FINAL in missing else ""
        raise RunDirError(f"{run_dir} is missing {', '.join(missing)}{hint}")
    header = read_header(run_dir)
    try:
        config = RunConfig.from_dict(header["run"])
    except ConfigError as err:
        raise RunDirError(f"{run_dir / CONFIG} holds an invalid run config ({err})") from None
    task = task_from_config(config.task, config.task_config)
    dataset = task.generate(config.seed)
    if dataset.content_hash != header.get("dataset_hash"):
        raise RunDirError(f"the regenerated dataset does not match {run_dir}'s recorded hash "
                          "(was it written by another memlens version?)")
    tokenizer = MemlensTokenizer.load(run_dir / TOKENIZER)
    if tokenizer.vocab != task.tokenizer.vocab:
        raise RunDirError(f"{run_dir / TOKENIZER} does not match the task's vocabulary")
    model = _model_from(weights, config, task)
    backend.to_device(model, device).eval()
    summary = read_summary(run_dir)
    return Run(path=run_dir, config=config, task=task, tokenizer=tokenizer, model=model,
               dataset=dataset, metrics=pd.DataFrame(read_metrics(run_dir)), summary=summary)
