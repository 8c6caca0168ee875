"""Counterfactual inputs for activation patching, from the task's recipes.

Every task declares recipes (``TaskBase.counterfactuals``) that edit input tokens so as to
*change* an intermediate result or to *preserve* it. :func:`make_counterfactuals` gives one kind;
:func:`matched_counterfactuals` gives both for the same examples, editing the same tokens, which is
what separates "the model uses the intermediate" from "the model uses the input's identity": a
look-up keyed on the input tokens cannot tell a changing edit from a preserving one. The recipes
of FDA and THR are described in :mod:`memlens.tasks.fda_analysis` and
:mod:`memlens.tasks.thr_analysis`; every pair is verified before use.
"""

from __future__ import annotations

import numpy as np
import torch

from memlens.analysis.common import AnalysisError
from memlens.tasks import task_for
from memlens.tasks.base import Examples
from memlens.tasks.protocol import KINDS, CounterfactualPairs, MatchedPairs, TaskError


def valid_variables(task) -> list[str]:
    """Intermediates that have a changing recipe."""
    return sorted({name for name, _ in task.entries(kind="change")})


def make_counterfactuals(examples: Examples, variable: str, column: int | None = None, *,
                         kind: str = "change", seed: int = 0) -> CounterfactualPairs:
    """Counterfactual partners for ``examples`` that change (or preserve) ``variable[column]``.

    >>> from memlens.tasks import make_task
    >>> ex = make_task("fda", preset="tiny").generate(0).train[:50]
    >>> pairs = make_counterfactuals(ex, "column_sum", column=1)
    >>> pairs.verify(); pairs.intended
    [('column_sum', 1)]
    >>> make_counterfactuals(ex, "column_sum", column=1, kind="preserve").intended
    []
    """
    task = task_for(examples)
    if len(examples) == 0:
        raise AnalysisError("no examples to build counterfactuals for")
    if kind not in KINDS:
        raise AnalysisError(f"kind={kind!r} is invalid: expected one of {list(KINDS)}")
    names = valid_variables(task)
    if variable not in names:
        raise AnalysisError(f"unknown variable {variable!r} for counterfactual patching on "
                            f"{task.name}; valid variables: {names}")
    # One stream per kind, so that asking for one kind never changes the other's draws.
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    try:
        pairs = task.counterfactuals(examples, variable, column, kind, rng)
    except TaskError as err:
        raise AnalysisError(str(err)) from None
    pairs.verify()
    return pairs


def _rows_of(pairs: CounterfactualPairs, keep: torch.Tensor) -> torch.Tensor:
    """Rows of ``pairs.counterfactual`` that belong to the requested examples in ``keep``."""
    row = torch.cumsum(pairs.valid.long(), 0) - 1
    return row[keep]


def matched_counterfactuals(examples: Examples, variable: str, column: int | None = None, *,
                            seed: int = 0) -> MatchedPairs:
    """A changing and a preserving counterfactual of each example (those that have both).

    >>> from memlens.tasks import make_task
    >>> ex = make_task("fda", preset="tiny").generate(0).train[:50]
    >>> m = matched_counterfactuals(ex, "column_sum", column=0)
    >>> bool((m.change.intermediates["column_sum"][:, 0] != m.original.intermediates["column_sum"][:, 0]).all())
    True
    >>> bool((m.preserve.intermediates["column_sum"] == m.original.intermediates["column_sum"]).all())
    True
    """
    change = make_counterfactuals(examples, variable, column, kind="change", seed=seed)
    preserve = make_counterfactuals(examples, variable, column, kind="preserve", seed=seed)
    both = change.valid & preserve.valid
    if not both.any():
        raise AnalysisError(f"no example has both a changing and a preserving counterfactual "
                            f"for {variable}" + ("" if column is None else f"[{column}]"))
    edited = sorted(set(change.edited_positions) | set(preserve.edited_positions))
    return MatchedPairs(variable, column, examples[both], change.counterfactual[_rows_of(change, both)],
                        preserve.counterfactual[_rows_of(preserve, both)], both, edited,
                        change.answer_slots)


__all__ = ["CounterfactualPairs", "MatchedPairs", "make_counterfactuals", "matched_counterfactuals",
           "valid_variables"]
