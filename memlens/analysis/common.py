"""Shared pieces of the analyses: input checks, hook names, chunked caching, result I/O.

Every analysis is a pure function ``(model, examples, ...) -> Result`` and checks its inputs
before the first forward pass.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from memlens.tasks.base import Examples


class AnalysisError(ValueError):
    """Bad input to an analysis: named, and raised before any forward pass."""


def model_task_name(model) -> str | None:
    """The memlens task a model was built for, read from its tokenizer (``memlens-fda`` ...)."""
    tok = getattr(model, "tokenizer", None)
    name = getattr(tok, "name_or_path", "") or ""
    return name.removeprefix("memlens-") if name.startswith("memlens-") else None


def check_examples(model, examples: Examples, what: str = "examples") -> None:
    """Refuse examples that are empty, of another task, or that do not fit the model."""
    if len(examples) == 0:
        raise AnalysisError(f"{what} is empty: an analysis needs at least one example")
    task = model_task_name(model)
    if task is not None and examples.task_name and examples.task_name != task:
        raise AnalysisError(f"{what} are {examples.task_name!r} examples but the model was built "
                            f"for the {task!r} task")
    if examples.tokens.shape[1] > model.cfg.n_ctx:
        raise AnalysisError(f"{what} have {examples.tokens.shape[1]} positions; the model takes "
                            f"at most {model.cfg.n_ctx}")
    top = int(examples.tokens.max())
    if top >= model.cfg.d_vocab:
        raise AnalysisError(f"{what} hold token id {top}, outside the model's vocabulary of "
                            f"{model.cfg.d_vocab}: examples from another tokenizer?")


def analysis_subset(examples: Examples) -> Examples:
    """The examples of the kind that can carry noise (``TaskBase.analysis_mask``; THR: two-hop
    queries); all of them when the examples carry no task origin."""
    if not examples.origin:
        return examples
    from memlens.tasks import task_for

    mask = task_for(examples).analysis_mask(examples)
    return examples if bool(mask.all()) else examples[mask]


def check_groups(model, groups: Mapping[str, Examples]) -> None:
    if not groups:
        raise AnalysisError("no groups of examples were given")
    for name, examples in groups.items():
        check_examples(model, examples, what=f"group {name!r}")


def check_layers(model, layers: Iterable[int] | None, allow_final: bool = False) -> list[int]:
    """Layer indices, all of them by default; out of range is an error naming the range."""
    n = model.cfg.n_layers + (1 if allow_final else 0)
    if layers is None:
        return list(range(n))
    layers = [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < n]
    if bad:
        raise AnalysisError(f"layer(s) {bad} out of range: the model has layers 0..{n - 1}")
    return layers


def check_positions(n_pos: int, positions: Iterable[int] | None) -> list[int]:
    """Positions of ``n_pos``-long sequences, all by default; out of range names the range."""
    if positions is None:
        return list(range(n_pos))
    positions = [int(p) for p in positions]
    bad = [p for p in positions if not 0 <= p < n_pos]
    if bad:
        raise AnalysisError(f"position(s) {bad} out of range: sequences have positions 0..{n_pos - 1}")
    return positions


def resid_point_names(n_layers: int, with_mid: bool = True) -> list[tuple[str, str]]:
    """Residual-stream points in order: (label, hook name). ``pre0, mid0, pre1, ..., post``."""
    points = []
    for layer in range(n_layers):
        points.append((f"L{layer}.pre", f"blocks.{layer}.hook_resid_pre"))
        if with_mid:
            points.append((f"L{layer}.mid", f"blocks.{layer}.hook_resid_mid"))
    points.append((f"L{n_layers - 1}.post", f"blocks.{n_layers - 1}.hook_resid_post"))
    return points


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def cached_activations(model, tokens: Tensor, hook_names: list[str], positions: list[int] | None = None,
                       chunk_size: int = 1024) -> dict[str, Tensor]:
    """Activations at ``hook_names`` (only those: ``names_filter``), for ``positions``, on the CPU.
    The run stops after the last layer it needs (:func:`stop_layer`).

    Cached chunk by chunk so that memory stays bounded by ``chunk_size`` sequences of the
    requested hooks, never the whole cache.
    """
    wanted = set(hook_names)
    out: dict[str, list[Tensor]] = {name: [] for name in hook_names}
    device = model_device(model)
    stop = stop_layer(hook_names, model.cfg.n_layers)
    handed_on = None if stop is None else f"blocks.{stop}.hook_resid_pre"
    for part in chunks(len(tokens), chunk_size):
        # TransformerLens' own run, not the fused record: probes fitted on features 1e-6 apart
        # end elsewhere where L-BFGS has not converged (tests/test_cross_version.py).
        resid, cache = model.run_with_cache(tokens[part].to(device), names_filter=lambda n: n in wanted,
                                            stop_at_layer=stop, return_type=None)
        for name in hook_names:
            act = resid if name == handed_on else cache[name]
            out[name].append((act if positions is None else act[:, positions]).cpu())
        del cache
    return {name: torch.cat(parts) for name, parts in out.items()}


_EMBEDDING_HOOKS = frozenset({"hook_embed", "hook_pos_embed"})


def stop_layer(hook_names: Iterable[str], n_layers: int) -> int | None:
    """The ``stop_at_layer`` that still fires every hook of ``hook_names`` (None: the whole
    model). A run stopped at layer ``l`` returns ``blocks.{l}.hook_resid_pre`` (what the last
    block run hands on) without firing it.

    >>> stop_layer(["blocks.1.hook_resid_pre"], 4), stop_layer(["blocks.1.attn.hook_z"], 4)
    (1, 2)
    >>> stop_layer(["blocks.3.hook_resid_post"], 4) is None, stop_layer(["ln_final.hook_scale"], 4)
    (True, None)
    """
    need = 1  # a run stopped at 0 runs no block: keep it out of the backends' edge cases
    for name in hook_names:
        if name in _EMBEDDING_HOOKS:
            continue
        parts = name.split(".")
        if parts[0] != "blocks" or len(parts) < 3 or not parts[1].isdigit():
            return None
        layer = int(parts[1])
        need = max(need, layer if name == f"blocks.{layer}.hook_resid_pre" else layer + 1)
    return need if need < n_layers else None


def to_jsonable(value: Any) -> Any:
    """Tensors, arrays and dataclasses to plain JSON values."""
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


class Result:
    """Base of analysis results: ``to_frame()`` (long pandas), ``summary()``, JSON I/O, and one
    renderer: ``render(data)`` draws a plotly figure from the JSON data (``to_json()``, or an
    ``analysis/<name>.json`` file), and ``figure()`` is ``render(self.to_json())``, so a
    notebook and the report draw the same picture from the same numbers."""

    name = "result"

    def to_frame(self) -> pd.DataFrame:  # pragma: no cover - every result overrides it
        raise NotImplementedError

    def summary(self) -> dict:
        return {}

    def to_json(self) -> dict:
        return {"analysis": self.name, "summary": to_jsonable(self.summary()),
                "frame": json.loads(self.to_frame().to_json(orient="records"))}

    @staticmethod
    def render(data: dict):  # pragma: no cover - every result overrides it
        raise NotImplementedError

    def figure(self):
        return self.render(self.to_json())


class ResultSet(Result):
    """Several results of one analysis (e.g. one per intermediate), framed together and drawn
    by one ``renderer(data)``."""

    def __init__(self, items: dict[str, Result], name: str = "results", renderer=None):
        self.items, self.name, self._renderer = items, name, renderer

    def render(self, data: dict):
        if self._renderer is None:
            raise AnalysisError(f"the {self.name} result set has no renderer")
        return self._renderer(data)

    def to_frame(self) -> pd.DataFrame:
        frames = [r.to_frame().assign(item=key) for key, r in self.items.items()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def summary(self) -> dict:
        return {key: r.summary() for key, r in self.items.items()}

    def figure(self, item: str | None = None):
        """All items in one figure; ``item``: one item's own figure."""
        if item is None:
            return self.render(self.to_json())
        if item not in self.items:
            raise AnalysisError(f"item {item!r} is not in this result set: {sorted(self.items)}")
        return self.items[item].figure()
