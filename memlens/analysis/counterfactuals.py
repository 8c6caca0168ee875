"""Counterfactual inputs that change one intermediate result, for activation patching.

Recipes (each pair is verified to differ in exactly the intended intermediates):

* FDA ``column_sum`` at column c: the last operand's digit in column c is replaced so that the column
  sum changes while every carry stays the same (the new digit keeps the carry out of column c).
  Differs in: ``column_sum[c]``.
* FDA ``carry`` into column c (c >= 1): a carry cannot change alone -- it is a function of the
  column below -- so the last operand's digit in column c-1 is replaced so that the carry into c flips
  while the carry into c+1 stays. Differs in: ``carry[c]`` and ``column_sum[c-1]``.
* FDA ``partial_sum`` j (more than two operands): operand j+1 is raised by delta and operand j+2
  lowered by delta, so that the running sum of the first j+2 operands changes and the total (and
  every other running sum) does not. Differs in: ``partial_sum[j]`` (column sums and carries may
  change too; they are not checked).
* THR ``bridge_entity``: the head entity is replaced by another entity that has relation r1, whose
  r1-tail is a different bridge that has relation r2, and (where possible) a different answer.
  Differs in: ``head_entity``, ``bridge_entity`` (and ``answer_entity`` wherever such a head
  exists).

Examples for which no counterfactual exists (e.g. no digit keeps the carries) are reported in
``valid``; the caller skips or refuses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from memlens.analysis.common import AnalysisError
from memlens.tasks import FDATask, THRTask, dataset_for, task_for
from memlens.tasks.base import Examples

VARIABLES = {"fda": ("column_sum", "carry", "partial_sum"), "thr": ("bridge_entity",)}
CHECKED = {"fda": ("column_sum", "carry", "partial_sum"),
           "thr": ("head_entity", "relation_1", "relation_2", "bridge_entity", "answer_entity")}


@dataclass
class CounterfactualPairs:
    """``original[i]`` and ``counterfactual[i]`` differ in the intended intermediate(s).

    ``valid`` flags which of the requested examples got a counterfactual; ``original`` and
    ``counterfactual`` hold only those. ``intended`` lists ``(name, column)`` entries that differ
    in every pair; intermediates named in ``free`` may change as a side effect; every other
    checked intermediate is identical. ``answer_slots`` are the answer positions (indices into
    ``answer_pos``) that the intended change itself decides: the column of a column sum or of a
    carry, the THR answer; empty for a partial sum, which leaves the answer unchanged.
    """

    variable: str
    column: int | None
    original: Examples
    counterfactual: Examples
    valid: Tensor
    intended: list[tuple[str, int | None]]
    free: tuple[str, ...] = ()
    answer_slots: list[int] = field(default_factory=list)

    def differing(self) -> dict[tuple[str, int | None], Tensor]:
        """Per checked intermediate entry, which pairs differ in it."""
        task = self.original.task_name
        out = {}
        for name in CHECKED[task]:
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
        """Raise unless every pair differs in every intended entry and in no other checked one."""
        for key, diff in self.differing().items():
            if key in self.intended:
                if not bool(diff.all()):
                    raise AssertionError(f"counterfactual leaves {key} unchanged in some pairs")
            elif key[0] not in self.free and bool(diff.any()):
                raise AssertionError(f"counterfactual also changes {key}")


def valid_variables(task_name: str) -> tuple[str, ...]:
    return VARIABLES.get(task_name, ())


def make_counterfactuals(examples: Examples, variable: str, column: int | None = None,
                         seed: int = 0) -> CounterfactualPairs:
    """Counterfactual partners for ``examples`` that change ``variable`` (at ``column``).

    >>> from memlens.tasks import make_task
    >>> ex = make_task("fda", preset="tiny").generate(0).train[:50]
    >>> pairs = make_counterfactuals(ex, "column_sum", column=1)
    >>> pairs.verify(); pairs.intended
    [('column_sum', 1)]
    """
    task = task_for(examples)
    names = valid_variables(task.name)
    if variable not in names:
        raise AnalysisError(f"unknown variable {variable!r} for counterfactual patching on "
                            f"{task.name}; valid variables: {list(names)}")
    if len(examples) == 0:
        raise AnalysisError("no examples to build counterfactuals for")
    rng = np.random.default_rng(seed)
    if isinstance(task, FDATask):
        return _fda(task, examples, variable, column, rng)
    return _thr(task, examples, rng)


# -- FDA ---------------------------------------------------------------------------------------
def _check_column(column: int | None, low: int, high: int, variable: str) -> int:
    if column is None:
        raise AnalysisError(f"variable {variable!r} needs a column in [{low}, {high}]")
    if not low <= column <= high:
        raise AnalysisError(f"column={column} out of range for {variable!r}: expected [{low}, {high}]")
    return int(column)


def _digit_swap(operands: np.ndarray, col: int, keep, rng: np.random.Generator):
    """For each example, a new digit of the last operand in column ``col`` passing ``keep``.

    Only the last operand changes, so that running partial sums (which exclude it) stay fixed.
    ``keep(old_digit, new_digit) -> bool array`` says whether a replacement is acceptable.
    Returns new operands and a validity mask; one acceptable digit is drawn uniformly.
    """
    n, n_ops = operands.shape
    place = 10**col
    old = operands[:, -1] // place % 10
    ok = np.stack([(old != d) & keep(old, d) for d in range(10)], axis=1)
    valid = ok.any(1)
    new_digit = (rng.random(ok.shape) * ok).argmax(1)  # uniform among acceptable digits
    new = operands.copy()
    new[valid, -1] += (new_digit[valid] - old[valid]) * place
    return new, valid


def _fda(task: FDATask, examples: Examples, variable: str, column: int | None,
         rng: np.random.Generator) -> CounterfactualPairs:
    c = task.config
    inter = {k: v.numpy() for k, v in examples.intermediates.items()}
    operands, col_sum, carry = inter["operand"], inter["column_sum"], inter["carry"]
    if variable == "column_sum":
        col = _check_column(column, 0, c.n_digits - 1, variable)
        total = col_sum[:, col] + carry[:, col]

        def keep(old, d):
            return (total - old + d) // 10 == total // 10

        new, valid = _digit_swap(operands, col, keep, rng)
        intended = [("column_sum", col)]
    elif variable == "carry":
        col = _check_column(column, 1, c.n_digits, variable)
        below = col_sum[:, col - 1] + carry[:, col - 1]

        def keep(old, d):
            new_carry = (below - old + d) // 10
            flips = new_carry != carry[:, col]
            if col < c.n_digits:  # the carry out of column col must stay
                same_next = (col_sum[:, col] + new_carry) // 10 == carry[:, col + 1]
                return flips & same_next
            return flips

        new, valid = _digit_swap(operands, col - 1, keep, rng)
        intended = [("carry", col), ("column_sum", col - 1)]
    else:  # partial_sum
        if c.n_operands <= 2:
            raise AnalysisError("partial_sum exists only with more than two operands")
        j = _check_column(column, 0, c.n_operands - 3, variable)
        top = 10**c.n_digits - 1
        up, down = operands[:, j + 1], operands[:, j + 2]
        room = np.minimum(top - up, down)  # delta in [1, room] keeps both operands in range
        valid = room >= 1
        delta = np.where(valid, 1 + (rng.random(len(up)) * np.maximum(room, 1)).astype(np.int64), 0)
        delta = np.minimum(delta, np.maximum(room, 0))
        new = operands.copy()
        new[:, j + 1] += delta
        new[:, j + 2] -= delta
        intended = [("partial_sum", j)]
    valid_t = torch.from_numpy(valid)
    original = examples[valid_t]
    no_noise = np.zeros(int(valid.sum()), dtype=bool)
    new_v = new[valid]
    counterfactual = task._examples(new_v, new_v.sum(1), no_noise)
    counterfactual.origin = examples.origin
    free = ("column_sum", "carry") if variable == "partial_sum" else ()
    slots = [] if variable == "partial_sum" else [
        i for i in range(c.answer_width) if task.layout.answer_column(i) == col]
    return CounterfactualPairs(variable, column, original, counterfactual, valid_t, intended, free,
                               slots)


# -- THR ---------------------------------------------------------------------------------------
def _thr(task: THRTask, examples: Examples, rng: np.random.Generator) -> CounterfactualPairs:
    cfg = task.config
    inter = {k: v.numpy() for k, v in examples.intermediates.items()}
    if (inter["n_hops"] != 2).any():
        raise AnalysisError("bridge counterfactuals need two-hop queries; "
                            f"{int((inter['n_hops'] != 2).sum())} examples are atomic facts")
    train = dataset_for(examples).train
    facts = {k: v.numpy() for k, v in train.intermediates.items()}
    atomic = facts["n_hops"] == 1
    tail = np.full((cfg.n_entities, cfg.n_relations), -1, dtype=np.int64)
    tail[facts["head_entity"][atomic], facts["relation_1"][atomic]] = facts["answer_entity"][atomic]

    r1, r2 = inter["relation_1"], inter["relation_2"]
    bridge, answer = inter["bridge_entity"], inter["answer_entity"]
    new_bridge = tail[:, r1].T  # (n, E): r1-tail of every candidate head
    has_r2 = np.where(new_bridge >= 0, tail[np.maximum(new_bridge, 0), r2[:, None]], -1)
    ok = (new_bridge >= 0) & (new_bridge != bridge[:, None]) & (has_r2 >= 0)
    better = ok & (has_r2 != answer[:, None])
    use = np.where(better.any(1, keepdims=True), better, ok)
    valid = use.any(1)
    pick = (rng.random(use.shape) * use).argmax(1)
    rows = np.nonzero(valid)[0]
    parts = {
        "head_entity": pick[rows], "relation_1": r1[rows], "relation_2": r2[rows],
        "bridge_entity": new_bridge[rows, pick[rows]], "answer_entity": has_r2[rows, pick[rows]],
    }
    valid_t = torch.from_numpy(valid)
    counterfactual = task._examples(parts, parts["answer_entity"], np.zeros(len(rows), dtype=bool))
    counterfactual.origin = examples.origin
    intended = [("head_entity", None), ("bridge_entity", None)]
    return CounterfactualPairs("bridge_entity", None, examples[valid_t], counterfactual, valid_t,
                               intended, free=("answer_entity",), answer_slots=[0])
