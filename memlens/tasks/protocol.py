"""The task protocol: what a task declares so that every analysis and the scorecard run on it.

The analysis layer, the claims and the views never name a task. They ask the task (rebuilt from
``Examples.origin`` or taken from a loaded run) for:

* its **intermediates** (:class:`Intermediate`) and, per intermediate column, the **eligible
  positions**: where the whole prompt is visible (before that, by the causal mask, a noisy
  example's activations are those of every input sharing its prefix) and no answer token that
  reveals the intermediate is visible yet;
* **counterfactual recipes** (:meth:`TaskBase.counterfactuals`) that edit the same input tokens
  so as to *change* an intermediate, or to *preserve* it;
* the **neuron features** its heuristic classification uses, and which feature families count
  as heuristics;
* its **input slots** (for per-input resampling), extra **logit-lens targets** (the THR bridge),
  which examples can carry noise (``analysis_mask``), held-out **neighbours** of noisy examples,
  the overrides of its **pure-memorizer reference**, and the **claims** that apply to it.

:class:`TaskBase` gives every hook a default, so a new task implements ``generate`` and the
declarations it has; docs/own-task.md walks through one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from memlens.tasks.base import Dataset, Examples

KINDS = ("change", "preserve")
ALL_CLAIMS = (1, 2, 3, 4, 5, 6, 7)


class TaskError(ValueError):
    """A request the task cannot serve (unknown intermediate, column, recipe); names the valid ones."""


@dataclass(frozen=True)
class Intermediate:
    """One intermediate result a task stores in ``Examples.intermediates[name]``.

    ``columns`` is ``(None,)`` for a per-example scalar ``(n,)`` and the column indices for an
    ``(n, k)`` tensor. ``probe``: linear probes read it. ``claims``: the claims whose statistic
    uses it (3: probes; 4 and 5: counterfactual patching). ``kinds``: the counterfactual recipes
    the task has for it (``change``, ``preserve``), for ``recipe_columns`` (default: every column).
    """

    name: str
    columns: tuple[int | None, ...]
    description: str
    probe: bool = True
    claims: tuple[int, ...] = ()
    kinds: tuple[str, ...] = ()
    recipe_columns: tuple[int | None, ...] | None = None

    def has_recipe(self, column: int | None, kind: str) -> bool:
        cols = self.columns if self.recipe_columns is None else self.recipe_columns
        return kind in self.kinds and column in cols

    def label(self, column: int | None) -> str:
        """``column_sum[2]`` or ``bridge_entity``."""
        return self.name if column is None else f"{self.name}[{column}]"

    def entries(self) -> list[tuple[str, int | None]]:
        return [(self.name, c) for c in self.columns]


@dataclass
class CounterfactualPairs:
    """``original[i]`` and ``counterfactual[i]`` differ in the intended intermediate(s).

    ``valid`` flags which of the requested examples got a counterfactual; ``original`` and
    ``counterfactual`` hold only those. ``kind`` is ``change`` (the intermediate differs) or
    ``preserve`` (it is kept while the same input tokens are edited). ``intended`` lists
    ``(name, column)`` entries that differ in every pair; intermediates named in ``free`` may
    change as a side effect; every other checked intermediate is identical. ``answer_slots``
    are the answer positions (indices into ``answer_pos``) that the intended change decides.
    ``edited_positions``: the token positions the recipe may edit.
    """

    variable: str
    column: int | None
    original: Examples
    counterfactual: Examples
    valid: Tensor
    intended: list[tuple[str, int | None]]
    free: tuple[str, ...] = ()
    answer_slots: list[int] = field(default_factory=list)
    kind: str = "change"
    checked: tuple[str, ...] = ()
    edited_positions: list[int] = field(default_factory=list)

    def differing(self) -> dict[tuple[str, int | None], Tensor]:
        """Per checked intermediate entry, which pairs differ in it."""
        out = {}
        for name in self.checked:
            if name not in self.original.intermediates:
                continue
            a, b = self.original.intermediates[name], self.counterfactual.intermediates[name]
            if a.ndim == 1:
                out[(name, None)] = a != b
            else:
                for c in range(a.shape[1]):
                    out[(name, c)] = a[:, c] != b[:, c]
        return out

    def verify(self) -> None:
        """Raise unless every pair differs in every intended entry and in no other checked one,
        and only the declared positions are edited."""
        for key, diff in self.differing().items():
            if key in self.intended:
                if not bool(diff.all()):
                    raise AssertionError(f"{self.kind} counterfactual leaves {key} unchanged in "
                                         "some pairs")
            elif key[0] not in self.free and bool(diff.any()):
                raise AssertionError(f"{self.kind} counterfactual also changes {key}")
        edited = (self.original.tokens != self.counterfactual.tokens).any(0)
        edited[self.original.answer_token_pos] = False
        outside = sorted(set(edited.nonzero().flatten().tolist()) - set(self.edited_positions))
        if outside:
            raise AssertionError(f"{self.kind} counterfactual edits positions {outside} outside "
                                 f"its declared {self.edited_positions}")


@dataclass
class MatchedPairs:
    """A changing and a preserving counterfactual of the same examples, editing the same tokens.

    ``original``, ``change`` and ``preserve`` are aligned row by row; ``valid`` flags which of the
    requested examples have both; ``n_edited`` is the number of tokens each edit changes (the
    same for both kinds, per example).
    """

    variable: str
    column: int | None
    original: Examples
    change: Examples
    preserve: Examples
    valid: Tensor
    edited_positions: list[int]
    answer_slots: list[int]

    def __len__(self) -> int:
        return len(self.original)


@dataclass
class Neighbours:
    """Held-out inputs near noisy training examples (claim 2's locality check).

    ``examples`` are clean (their labels are their true answers); ``source[i]`` is the row of
    the noisy example (in the ``noisy`` batch the task was given) that neighbour ``i`` is near,
    and ``noisy_label[i]`` that example's noisy label, the label a leak would show.
    """

    examples: Examples
    source: Tensor
    noisy_label: Tensor
    relation: list[str]


class TaskBase:
    """Defaults for the task protocol; FDA, THR and user tasks derive from it.

    Required of a subclass: ``name``, ``config``, ``tokenizer``, ``seq_len``, ``answer_pos``
    (positions whose logits predict the answer tokens), ``generate(seed) -> Dataset``,
    ``prompt_positions()`` and ``intermediates()``. Everything else is optional.
    """

    name: str = "task"
    claims: tuple[int, ...] = (1, 2, 3, 4, 5, 7)
    heuristic_families: frozenset[str] = frozenset()

    # -- declarations ---------------------------------------------------------------------
    def intermediates(self) -> list[Intermediate]:
        return []

    def prompt_positions(self) -> list[int]:
        """Positions of the input tokens (the prompt), ``<bos>`` excluded."""
        raise NotImplementedError

    @property
    def prompt_complete_pos(self) -> int:
        """The first position that sees every input token."""
        return max(self.prompt_positions())

    def intermediate(self, name: str) -> Intermediate:
        for spec in self.intermediates():
            if spec.name == name:
                return spec
        raise TaskError(f"unknown intermediate {name!r} for the {self.name} task; valid names: "
                        f"{[s.name for s in self.intermediates()]}")

    def check_entry(self, name: str, column: int | None) -> Intermediate:
        """The intermediate, after checking that ``column`` is one of its columns."""
        spec = self.intermediate(name)
        if column not in spec.columns:
            raise TaskError(f"column={column!r} is invalid for {name!r}: expected one of "
                            f"{list(spec.columns)}")
        return spec

    def entries(self, claim: int | None = None, probe: bool | None = None,
                kind: str | None = None) -> list[tuple[str, int | None]]:
        """``(name, column)`` of every intermediate column, filtered by claim, probing or recipe."""
        out = []
        for spec in self.intermediates():
            if claim is not None and claim not in spec.claims:
                continue
            if probe is not None and spec.probe != probe:
                continue
            out += [(n, c) for n, c in spec.entries() if kind is None or spec.has_recipe(c, kind)]
        return out

    def answer_slots_revealing(self, name: str, column: int | None) -> list[int]:
        """Answer slots (indices into ``answer_pos``) whose token reveals the intermediate.
        Default: every slot (the most conservative)."""
        self.check_entry(name, column)
        return list(range(len(self.answer_pos)))

    def eligible_positions(self, name: str, column: int | None = None) -> list[int]:
        """Positions where a noisy example's activations can differ from a clean one's and no
        answer token revealing ``name[column]`` is visible: from :attr:`prompt_complete_pos`
        up to the position that predicts the first revealing answer token."""
        slots = self.answer_slots_revealing(name, column)
        last = min((self.answer_pos[s] for s in slots), default=self.answer_pos[-1])
        return list(range(self.prompt_complete_pos, last + 1))

    def analysis_mask(self, examples: Examples) -> Tensor:
        """Which examples are of the kind that can carry noise (default: all)."""
        return torch.ones(len(examples), dtype=torch.bool)

    def checked_intermediates(self) -> tuple[str, ...]:
        """Intermediates a counterfactual pair is verified against."""
        return tuple(spec.name for spec in self.intermediates())

    # -- recipes and features ----------------------------------------------------------------
    def counterfactuals(self, examples: Examples, name: str, column: int | None, kind: str,
                        rng: np.random.Generator) -> CounterfactualPairs:
        raise TaskError(f"the {self.name} task has no counterfactual recipes")

    def neuron_features(self, examples: Examples) -> dict[str, tuple[str, Tensor]]:
        """Candidate features of examples for neuron classification: ``name -> (family,
        non-negative integer values)``. Default: none."""
        return {}

    def input_slots(self) -> tuple[dict[str, tuple[list[int], list[int]]], dict[str, list[str]]]:
        """Per input: (positions, token ids it may be resampled to), and named groups of inputs.
        Default: every prompt position, resampled to any prompt token seen there."""
        raise TaskError(f"the {self.name} task declares no input slots")

    def lens_targets(self, examples: Examples) -> dict[str, Tensor]:
        """Extra token ids the logit lens tracks, each ``(n,)`` (e.g. the THR bridge)."""
        return {}

    def neighbours(self, dataset: Dataset, noisy: Examples, seed: int,
                   max_per_example: int = 4) -> Neighbours:
        raise TaskError(f"the {self.name} task defines no neighbours of noisy examples")

    def reference_overrides(self) -> dict[str, Any]:
        """Task-config overrides of the pure-memorizer reference: every label random."""
        return {"noise_rate": 1.0}

    def answer_columns(self) -> list[int]:
        """A label per answer slot for figures (default: the slot index)."""
        return list(range(len(self.answer_pos)))

    def record(self, examples: Examples, i: int, split: str) -> dict:
        """One example as a JSON-ready dict (``memlens data --export``): tokens and labels as
        token strings, each intermediate as :meth:`record_intermediate` writes it."""
        tok = self.tokenizer
        return {
            "split": split,
            "tokens": tok.to_str_tokens(examples.tokens[i].tolist()),
            "label": tok.to_str_tokens(examples.labels[i].tolist()),
            "true_label": tok.to_str_tokens(examples.true_labels[i].tolist()),
            "is_noisy": bool(examples.is_noisy[i]),
            "intermediates": {name: self.record_intermediate(name, value[i])
                              for name, value in examples.intermediates.items()},
        }

    def record_intermediate(self, name: str, value: Tensor) -> Any:
        """One example's value of intermediate ``name`` in :meth:`record` (default: numbers)."""
        return value.tolist()

    def describe_positions(self) -> Mapping[str, Any]:
        return {"prompt": self.prompt_positions(), "answer_pos (predicting)": list(self.answer_pos)}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise TaskError(f"kind={kind!r} is invalid: expected one of {list(KINDS)}")
    return kind
