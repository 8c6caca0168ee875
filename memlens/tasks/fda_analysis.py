"""What the analyses ask of the FDA task: counterfactual recipes, neighbours, neuron features.

Counterfactual recipes edit **the digits of the first two operands in one column**, so that a
changing and a preserving edit of the same example touch the same two tokens:

* ``column_sum[c]``: *change*: the column sum changes and every carry stays (only answer digit
  ``c`` changes); *preserve*: ``(a_c + d, b_c - d)``, the column sum, every carry and the sum stay.
* ``carry[c]`` (into column ``c >= 1``): the digits of column ``c - 1`` are edited so that its
  column sum changes; *change*: the carry into ``c`` flips and the carry out of ``c`` stays;
  *preserve*: the carry into ``c`` stays.
* ``partial_sum[j]`` (more than two operands; *change* only): operand ``j + 1`` is raised by
  ``delta`` and operand ``j + 2`` lowered by it, so the running sum of the first ``j + 2`` operands
  changes and the total does not.

Every pair is verified (``CounterfactualPairs.verify``): it differs in the intended intermediates,
in no other checked one, and only at the declared positions.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from memlens.tasks.base import Dataset, Examples
from memlens.tasks.protocol import CounterfactualPairs, Neighbours, TaskError, check_kind

CHECKED = ("column_sum", "carry", "partial_sum")


def _pick(ok: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a boolean ``(n, k)`` candidate table: a uniformly drawn candidate, and
    whether there was any."""
    valid = ok.any(1)
    choice = (rng.random(ok.shape) * ok).argmax(1)
    return choice, valid


def _column_edit(operands: np.ndarray, col: int, accept, rng: np.random.Generator):
    """New digits ``(a', b')`` of operands 0 and 1 in column ``col``, both different from the old
    ones, drawn uniformly among those ``accept(a, b, a', b')`` allows (arrays broadcast over the
    100 candidates). Returns new operands and a validity mask."""
    place = 10**col
    a = operands[:, 0] // place % 10
    b = operands[:, 1] // place % 10
    grid = np.arange(100)
    new_a, new_b = grid // 10, grid % 10
    ok = ((new_a[None] != a[:, None]) & (new_b[None] != b[:, None])
          & accept(a[:, None], b[:, None], new_a[None], new_b[None]))
    choice, valid = _pick(ok, rng)
    new = operands.copy()
    new[valid, 0] += (new_a[choice[valid]] - a[valid]) * place
    new[valid, 1] += (new_b[choice[valid]] - b[valid]) * place
    return new, valid


def counterfactuals(task, examples: Examples, name: str, column: int | None, kind: str,
                    rng: np.random.Generator) -> CounterfactualPairs:
    """The FDA recipes (module docstring)."""
    check_kind(kind)
    task.check_entry(name, column)
    spec = task.intermediate(name)
    if not spec.has_recipe(column, kind):
        cols = spec.columns if spec.recipe_columns is None else spec.recipe_columns
        raise TaskError(f"FDA has no {kind!r} recipe for {spec.label(column)}: recipes "
                        f"{list(spec.kinds)} exist for columns {list(cols)}")
    c, lay = task.config, task.layout
    inter = {k: v.numpy() for k, v in examples.intermediates.items()}
    operands, col_sum, carry = inter["operand"], inter["column_sum"], inter["carry"]
    free: tuple[str, ...] = ("partial_sum",) if c.n_operands > 2 else ()
    if name == "column_sum":
        col = column
        total = (col_sum[:, col] + carry[:, col])[:, None]

        def accept(a, b, na, nb):
            if kind == "preserve":
                return na + nb == a + b
            return (na + nb != a + b) & ((total - a - b + na + nb) // 10 == total // 10)

        new, valid = _column_edit(operands, col, accept, rng)
        intended = [("column_sum", col)] if kind == "change" else []
        edited, decided = col, [col]
    elif name == "carry":
        col = column
        below = (col_sum[:, col - 1] + carry[:, col - 1])[:, None]
        old = carry[:, col][:, None]
        above = col_sum[:, col][:, None] if col < c.n_digits else None
        keep_out = carry[:, col + 1][:, None] if col < c.n_digits else None

        def accept(a, b, na, nb):
            new_carry = (below - a - b + na + nb) // 10
            moved = na + nb != a + b  # both kinds change the column sum below
            if kind == "preserve":
                return moved & (new_carry == old)
            ok = moved & (new_carry != old)
            return ok if above is None else ok & ((above + new_carry) // 10 == keep_out)

        new, valid = _column_edit(operands, col - 1, accept, rng)
        intended = ([("carry", col)] if kind == "change" else []) + [("column_sum", col - 1)]
        edited, decided = col - 1, [col]
    else:  # partial_sum, change only
        j = column
        top = 10**c.n_digits - 1
        up, down = operands[:, j + 1], operands[:, j + 2]
        room = np.minimum(top - up, down)  # delta in [1, room] keeps both operands in range
        valid = room >= 1
        delta = np.where(valid, 1 + (rng.random(len(up)) * np.maximum(room, 1)).astype(np.int64), 0)
        delta = np.minimum(delta, np.maximum(room, 0))
        new = operands.copy()
        new[:, j + 1] += delta
        new[:, j + 2] -= delta
        intended, free = [("partial_sum", j)], ("column_sum", "carry")
        positions = [lay.operand_digit_pos(k, d) for k in (j + 1, j + 2) for d in range(c.n_digits)]
        return _pairs(task, examples, name, column, kind, new, valid, intended, free, [], positions)
    positions = [lay.operand_digit_pos(0, edited), lay.operand_digit_pos(1, edited)]
    slots = [i for i in range(c.answer_width) if lay.answer_column(i) in decided]
    return _pairs(task, examples, name, column, kind, new, valid, intended, free, slots, positions)


def _pairs(task, examples, name, column, kind, new, valid, intended, free, slots,
           positions) -> CounterfactualPairs:
    valid_t = torch.from_numpy(np.asarray(valid, dtype=bool))
    new_v = new[valid]
    counterfactual = task._examples(new_v, new_v.sum(1), np.zeros(len(new_v), dtype=bool))
    counterfactual.origin = examples.origin
    return CounterfactualPairs(name, column, examples[valid_t], counterfactual, valid_t, intended,
                               free, slots, kind=kind, checked=CHECKED,
                               edited_positions=sorted(positions))


def input_codes(operands: np.ndarray, n_digits: int) -> np.ndarray:
    """One integer per input (the code ``generate`` draws), for membership tests."""
    scale = np.int64(10**n_digits)
    return sum(operands[:, k].astype(np.int64) * scale**k for k in range(operands.shape[1]))


def neighbours(task, dataset: Dataset, noisy: Examples, seed: int,
               max_per_example: int = 4) -> Neighbours:
    """Inputs one operand digit away from each noisy example that are not training inputs."""
    c = task.config
    train_codes = set(input_codes(dataset.train.intermediates["operand"].numpy(), c.n_digits).tolist())
    rng = np.random.default_rng(seed)
    ops = noisy.intermediates["operand"].numpy()
    rows, sources = [], []
    for i, operand in enumerate(ops):
        edits = []
        for k in range(c.n_operands):
            for col in range(c.n_digits):
                place = 10**col
                old = operand[k] // place % 10
                for d in range(10):
                    if d != old:
                        new = operand.copy()
                        new[k] += (d - old) * place
                        edits.append(new)
        edits = np.array(edits)
        fresh = edits[[code not in train_codes for code in input_codes(edits, c.n_digits).tolist()]]
        take = rng.permutation(len(fresh))[:max_per_example]
        rows.append(fresh[take])
        sources += [i] * len(take)
    new = np.concatenate(rows) if rows else np.zeros((0, c.n_operands), dtype=np.int64)
    examples = task._examples(new, new.sum(1), np.zeros(len(new), dtype=bool))
    examples.origin = noisy.origin
    source = torch.tensor(sources, dtype=torch.long)
    return Neighbours(examples, source, noisy.labels[source], ["one digit away"] * len(source))


# -- neuron features -------------------------------------------------------------------------
RANGE_BINS = 20
MODULI = tuple(range(2, 11))
HEURISTIC_FAMILIES = frozenset({"range", "mod", "digit", "column_sum", "carry"})


def range_width(values: Tensor) -> int:
    """Bin width for the range family: about ``RANGE_BINS`` bins, rounded up to 1, 2 or 5
    times a power of ten so that ranges read as round numbers.

    >>> range_width(torch.tensor([0, 19998]))
    1000
    """
    raw = (int(values.max()) + 1) / RANGE_BINS
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= raw:
                return step * scale
        scale *= 10


def neuron_features(examples: Examples) -> dict[str, tuple[str, Tensor]]:
    """Candidate heuristics of FDA examples (after Nikankin et al. 2025, "Arithmetic Without
    Algorithms"): ``name -> (family, integer values)``.

    Families: ``range`` (an operand or the sum, in about ``RANGE_BINS`` bins of a round width,
    named ``"... range (width W)"``),
    ``mod`` (an operand or the sum modulo 2..10), ``digit`` (a digit of an operand or of the sum
    at a column), ``column_sum`` and ``carry`` (per column).

    >>> from memlens.tasks import make_task
    >>> feats = neuron_features(make_task("fda", preset="tiny").generate(0).train[:10])
    >>> feats["sum mod 7"][0], feats["carry into column 1"][0]
    ('mod', 'carry')
    """
    inter = examples.intermediates
    operands, total = inter["operand"].long(), inter["sum"].long()
    n_digits = inter["column_sum"].shape[1]
    values = {f"operand {k}": operands[:, k] for k in range(operands.shape[1])}
    values["sum"] = total
    feats: dict[str, tuple[str, Tensor]] = {}
    for name, v in values.items():
        width = range_width(v)
        feats[f"{name} range (width {width})"] = ("range", v // width)
        for m in MODULI:
            feats[f"{name} mod {m}"] = ("mod", v % m)
        for col in range(n_digits + (1 if name == "sum" else 0)):
            feats[f"{name} digit {col}"] = ("digit", (v // 10 ** col) % 10)
    for col in range(n_digits):
        feats[f"column sum {col}"] = ("column_sum", inter["column_sum"][:, col].long())
        feats[f"carry into column {col + 1}"] = ("carry", inter["carry"][:, col + 1].long())
    return feats
