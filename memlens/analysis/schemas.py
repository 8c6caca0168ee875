"""Typed schemas of the analysis summaries that the scorecard reads.

The runner checks every summary against its schema before writing ``RUN/analysis/<name>.json``
and the scorecard checks it again when reading, so renaming a key in an analysis fails loudly at
both ends instead of silently turning a claim into "not measured". A schema lists the keys the
scorecard relies on (``typing.TypedDict``, checked recursively for nested TypedDicts, lists of
them and mappings to them); summaries may hold more.
"""

from __future__ import annotations

import typing
from typing import Any, TypedDict


class SchemaError(ValueError):
    """A summary lacks a key its consumers read, or holds the wrong kind of value there."""


# -- behaviour (claim 2) ------------------------------------------------------------------------
class BehaviourSummary(TypedDict):
    means: dict
    n: dict
    examples: dict[str, list]
    neighbour_source: list
    neighbour_relation: list


# -- logit lens (claim 3c) ----------------------------------------------------------------------
class FirstSlot(TypedDict):
    takeover_index: typing.Optional[int]
    takeover_point: typing.Optional[str]
    ranks: dict


class LogitLensSummary(TypedDict):
    first_slot: FirstSlot


# -- probes (claim 3a, 3b) ----------------------------------------------------------------------
class ProbeTarget(TypedDict):
    label: str
    site: dict
    controls: dict
    control: float
    accuracy: dict
    examples: dict[str, list]


class ProbesSummary(TypedDict):
    allowed_points: list
    takeover_point: typing.Optional[str]
    targets: list[ProbeTarget]


# -- patching (claims 4, 5) ---------------------------------------------------------------------
class DependenceGroup(TypedDict):
    n: int
    examples: dict[str, list]


class DependenceSummary(TypedDict):
    label: str
    site: dict
    noisy: DependenceGroup


# -- interventions (claim 4d) -------------------------------------------------------------------
class InterventionSettings(TypedDict):
    removed: bool
    majority: float
    tolerance: float
    inlp_probe_accuracy_before_each_iteration_and_after: list


class InterventionSummary(TypedDict):
    settings: InterventionSettings
    table: list
    examples: dict[str, list]


# -- neurons (claim 6) --------------------------------------------------------------------------
class PerNeuron(TypedDict):
    outlier: list
    heuristic: list
    variance_decile: list
    null_outlier: typing.Optional[list]


class NeuronsSummary(TypedDict):
    per_neuron: PerNeuron
    patching: typing.Optional[dict]
    null_note: typing.Optional[str]


SCHEMAS: dict[str, Any] = {
    "behaviour": BehaviourSummary,
    "logit_lens": LogitLensSummary,
    "probes": ProbesSummary,
    "patching": dict[str, DependenceSummary],
    "interventions": dict[str, InterventionSummary],
    "neurons": NeuronsSummary,
}


def _is_typeddict(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__")


def _check(value: Any, tp: Any, where: str) -> None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_typeddict(tp):
        if not isinstance(value, dict):
            raise SchemaError(f"{where} should be a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        for key in [k for k in hints if k in tp.__required_keys__]:  # declaration order
            if key not in value:
                raise SchemaError(f"{where} lacks {key!r} (keys: {sorted(value)})")
            _check(value[key], hints[key], f"{where}.{key}")
    elif origin is typing.Union:
        if value is None and type(None) in args:
            return
        _check(value, next(a for a in args if a is not type(None)), where)
    elif origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{where} should be a mapping, got {type(value).__name__}")
        if args:
            for key, item in value.items():
                _check(item, args[1], f"{where}[{key!r}]")
    elif origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"{where} should be a list, got {type(value).__name__}")
        if args:
            for i, item in enumerate(value):
                _check(item, args[0], f"{where}[{i}]")
    elif tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SchemaError(f"{where} should be a number, got {value!r}")
    elif isinstance(tp, type) and not isinstance(value, tp):
        raise SchemaError(f"{where} should be {tp.__name__}, got {type(value).__name__}")


def check(name: str, summary: Any) -> None:
    """Raise :class:`SchemaError` unless analysis ``name``'s summary has what its schema lists
    (analyses without a schema pass).

    >>> check("neurons", {"per_neuron": {"outlier": [1], "heuristic": [0], "variance_decile": [3],
    ...                                  "null_outlier": None}, "patching": None, "null_note": None})
    >>> check("neurons", {"per_neuron": {"outliers": [1]}})
    Traceback (most recent call last):
    ...
    memlens.analysis.schemas.SchemaError: neurons.per_neuron lacks 'outlier' (keys: ['outliers'])
    """
    if name in SCHEMAS:
        _check(summary, SCHEMAS[name], name)
