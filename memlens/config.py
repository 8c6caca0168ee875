"""Configuration helpers shared by every layer: validation errors and overrides.

Configs are plain frozen dataclasses (configuration as data). Each one validates itself in
``__post_init__`` so that a bad value is refused before any work starts, with a message that names
the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterable, Sequence
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the field, the value and the range."""


def require(condition: bool, field: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` unless ``condition`` holds.

    >>> require(0 <= 0.05 < 1, "noise_rate", 0.05, "a number in [0, 1)")
    """
    if not condition:
        raise ConfigError(f"{field}={value!r} is invalid: expected {allowed}")


def require_int(value: Any, field: str, low: int | None = None, high: int | None = None) -> None:
    """Refuse a non-integer or an integer outside ``[low, high]``."""
    allowed = "an integer"
    if low is not None and high is not None:
        allowed += f" in [{low}, {high}]"
    elif low is not None:
        allowed += f" >= {low}"
    elif high is not None:
        allowed += f" <= {high}"
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    require(ok, field, value, allowed)


def require_number(
    value: Any, field: str, low: float | None = None, high: float | None = None,
    low_open: bool = False, high_open: bool = False,
) -> None:
    """Refuse a non-number or a number outside the interval (open or closed at each end)."""
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    allowed = f"a number in {lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    require(ok, field, value, allowed)


def require_choice(value: Any, field: str, choices: Iterable[Any]) -> None:
    """Refuse a value that is not one of ``choices``."""
    choices = list(choices)
    require(value in choices, field, value, "one of " + ", ".join(repr(c) for c in choices))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (nested dataclasses become dicts)."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from :func:`to_dict` output; unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; valid fields: {sorted(names)}")
    return cls(**data)


def _parse_value(text: str, annotation: Any, field: str) -> Any:
    """Turn a command-line string into the type a dataclass field declares."""
    kind = annotation if isinstance(annotation, type) else None
    name = getattr(annotation, "__name__", str(annotation))
    try:
        if kind is bool or name == "bool":
            lowered = text.lower()
            if lowered in {"1", "true", "yes"}:
                return True
            if lowered in {"0", "false", "no"}:
                return False
            raise ValueError(text)
        if kind is int or name == "int":
            return int(text)
        if kind is float or name == "float":
            return float(text)
        if kind is str or name == "str":
            return text
        return json.loads(text)  # lists, optional values, ...
    except (ValueError, json.JSONDecodeError):
        raise ConfigError(f"{field}={text!r} is invalid: cannot be read as {name}") from None


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of ``cfg`` with fields replaced; string values are parsed by field type.

    >>> from memlens.tasks.fda import FDAConfig
    >>> apply_overrides(FDAConfig(), {"n_train": "500"}).n_train
    500
    """
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            raise ConfigError(
                f"{type(cfg).__name__} has no field {key!r}; valid fields: {sorted(fields)}"
            )
        if isinstance(value, str) and hints.get(key) is not str:
            value = _parse_value(value, hints.get(key), key)
        changes[key] = value
    return dataclasses.replace(cfg, **changes)


def parse_sets(pairs: Sequence[str]) -> dict[str, str]:
    """``["train.steps=100", ...]`` (``--set`` arguments) to ``{"train.steps": "100"}``.

    >>> parse_sets(["train.steps=100"])
    {'train.steps': '100'}
    """
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r} is invalid: expected SECTION.FIELD=VALUE")
        out[key.strip()] = value.strip()
    return out
