"""Checkpoints in safetensors: model weights, and for resuming the AdamW state too.

Nothing is ever unpickled: optimizer state is flattened into named tensors, and the step and the
run's config fingerprint go into the safetensors metadata. Every write is atomic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from memlens.io import atomic_path


class CheckpointError(RuntimeError):
    """A checkpoint is truncated, unreadable or belongs to another configuration."""


def save_weights(path: str | os.PathLike, model: torch.nn.Module, step: int, fingerprint: str) -> None:
    """Model weights with ``step`` and the config ``fingerprint`` in the metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"step": str(step), "fingerprint": fingerprint})


def save_resume_state(path: str | os.PathLike, model: torch.nn.Module,
                      optimizer: torch.optim.Optimizer, step: int, fingerprint: str) -> None:
    """Weights plus AdamW moments: everything needed to continue exactly where training stopped."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    scalars = {}
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    metadata = {
        "step": str(step), "fingerprint": fingerprint,
        "param_groups": json.dumps(opt_state["param_groups"]), "scalars": json.dumps(scalars),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _read(path: Path, fingerprint: str | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path} is truncated or unreadable: {err}") from None
    if fingerprint is not None and metadata.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {path} belongs to another configuration (fingerprint "
            f"{metadata.get('fingerprint')!r}, this run {fingerprint!r})"
        )
    return tensors, metadata


def _load_model_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    shapes = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or shapes:
        raise CheckpointError(
            f"checkpoint {path} does not match the model: missing {missing[:5]}, "
            f"shape mismatch {shapes[:5]}"
        )
    model.load_state_dict({k: tensors[k] for k in expected}, strict=True)


def load_weights(path: str | os.PathLike, model: torch.nn.Module,
                 fingerprint: str | None = None) -> int:
    """Load weights into ``model`` (from a weights or a resume file); returns their step."""
    path = Path(path)
    tensors, metadata = _read(path, fingerprint)
    if any(k.startswith("model.") for k in tensors):  # a resume file: weights + optimizer
        tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    _load_model_tensors(model, tensors, path)
    return int(metadata.get("step", -1))


def load_resume_state(path: str | os.PathLike, model: torch.nn.Module,
                      optimizer: torch.optim.Optimizer, fingerprint: str) -> int:
    """Restore weights and AdamW state; returns the step to continue from."""
    path = Path(path)
    tensors, metadata = _read(path, fingerprint)
    _load_model_tensors(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in json.loads(metadata.get("scalars", "{}")).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} has no usable optimizer state: {err}") from None
    return int(metadata["step"])
