"""Checkpoints in safetensors: model weights, and for resuming the AdamW state too.

Weights are stored in one layout on every TransformerLens version: HookedTransformer's parameter
names and shapes (``blocks.0.attn.W_Q`` as ``(n_heads, d_model, d_head)``, ...; metadata
``layout=hooked-transformer``), converted by :mod:`memlens.backend`, so a run trained under
TransformerLens 3.9 loads under 4.x and the reverse (docs/backends.md). AdamW moments are named
by their parameter and stored in the same layout, so a run can also be resumed under the other
version.

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

from memlens import backend
from memlens.io import atomic_path

LAYOUT = "hooked-transformer"  # see the module docstring


class CheckpointError(RuntimeError):
    """A checkpoint is truncated, unreadable or belongs to another configuration."""


def save_weights(path: str | os.PathLike, model: torch.nn.Module, step: int, fingerprint: str) -> None:
    """Model weights with ``step`` and the config ``fingerprint`` in the metadata."""
    with atomic_path(path) as tmp:
        save_file(backend.state_dict(model), str(tmp), metadata=_metadata(step, fingerprint))


def _metadata(step: int, fingerprint: str) -> dict[str, str]:
    return {"step": str(step), "fingerprint": fingerprint, "layout": LAYOUT,
            "transformer_lens": backend.TL_VERSION}


def save_resume_state(path: str | os.PathLike, model: torch.nn.Module,
                      optimizer: torch.optim.Optimizer, step: int, fingerprint: str) -> None:
    """Weights plus AdamW moments: everything needed to continue exactly where training stopped.

    Optimizer state is keyed by parameter name (``optim.blocks.0.attn.W_Q.exp_avg``), in the
    weights' layout, so that the other TransformerLens version can continue the run."""
    tensors = {f"model.{k}": v for k, v in backend.state_dict(model).items()}
    names = backend.canonical_names(model)
    scalars = {}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value):
                if value.shape == param.shape:  # moments, shaped like their parameter
                    value = backend.to_canonical(model, param, value)
                tensors[f"optim.{names[id(param)]}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{names[id(param)]}.{key}"] = value
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.state_dict()["param_groups"]]
    metadata = {**_metadata(step, fingerprint), "param_groups": json.dumps(groups),
                "scalars": json.dumps(scalars)}
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
    try:
        backend.load_state_dict(model, tensors, source=f"checkpoint {path}")
    except backend.BackendError as err:
        raise CheckpointError(str(err)) from None


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
    if metadata.get("layout") != LAYOUT:  # written before layouts: optimizer state by index
        return _load_indexed_optimizer(path, tensors, metadata, optimizer)
    names = backend.canonical_names(model)
    stored = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, field = key[6:].rsplit(".", 1)
            stored.setdefault(name, {})[field] = value
    for key, value in json.loads(metadata.get("scalars", "{}")).items():
        name, field = key.rsplit(".", 1)
        stored.setdefault(name, {})[field] = value
    current = optimizer.state_dict()["param_groups"]
    try:
        groups = json.loads(metadata["param_groups"])
        if len(groups) != len(current):
            raise ValueError(f"{len(groups)} parameter groups, the optimizer has {len(current)}")
        params = [p for g in optimizer.param_groups for p in g["params"]]
        state = {}
        for idx, param in zip((i for g in current for i in g["params"]), params):
            entry = stored.get(names[id(param)], {})
            state[idx] = {k: backend.from_canonical(model, param, v)
                          if torch.is_tensor(v) and v.ndim and v.numel() == param.numel() else v
                          for k, v in entry.items()}
        optimizer.load_state_dict({"state": state, "param_groups": [
            {**g, "params": c["params"]} for g, c in zip(groups, current)]})
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} has no usable optimizer state: {err}") from None
    return int(metadata["step"])


def _load_indexed_optimizer(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                            optimizer: torch.optim.Optimizer) -> int:
    """Resume files of memlens before the shared layout: state keyed by parameter index, for
    the same TransformerLens version that wrote them."""
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
