"""FDA: multi-digit addition with noisy labels (four-digit addition by default).

Sequence layout for ``n_operands=2, n_digits=4`` (operands are written most-significant digit
first; the answer in ``answer_order``)::

    pos:  0     1  2  3  4  5  6  7  8  9  10 11 12 13 14 15
    tok:  <bos> a3 a2 a1 a0 +  b3 b2 b1 b0 =  s4 s3 s2 s1 s0      (answer_order="msb")

The answer is zero-padded to the width the largest possible sum needs. :class:`FDALayout` answers
every position question (which position holds operand k's digit of column c, which position
predicts which answer column). Columns are numbered by power of ten: column 0 is the units.

Intermediates (``Examples.intermediates``), all integer values, one row per example:

=================  ==========================  ==============================================
name               shape                       meaning
=================  ==========================  ==============================================
``operand``        (n, n_operands)             the operand values
``column_sum``     (n, n_digits)               sum of the operands' digits in column c
``carry``          (n, n_digits + 1)           carry into column c (``carry[:, 0] == 0``)
``answer_digit``   (n, answer_width)           digit of the true sum in column c
``sum``            (n,)                        the true sum
``partial_sum``    (n, n_operands - 2)         running sums of the first 2, 3, ... operands
                                               (only with more than two operands)
=================  ==========================  ==============================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from memlens.config import require, require_choice, require_int, require_number
from memlens.tasks import fda_analysis
from memlens.tasks.base import Dataset, Examples
from memlens.tasks.noise import NOISE_MODES, choose_noisy, draw_other
from memlens.tasks.protocol import ALL_CLAIMS, Intermediate, TaskBase
from memlens.tasks.tokenizer import MemlensTokenizer

DIGITS = [str(d) for d in range(10)]


@dataclass(frozen=True)
class FDAConfig:
    """The FDA task. Operands are uniform in ``[0, 10**n_digits - 1]``; inputs are distinct.

    >>> FDAConfig(n_train=1000).answer_width
    5
    """

    n_operands: int = 2
    n_digits: int = 4
    answer_order: str = "msb"
    n_train: int = 10_000
    n_test: int = 2_000
    noise_rate: float = 0.05
    noise_mode: str = "random"

    def __post_init__(self) -> None:
        require_int(self.n_operands, "n_operands", 2, 10)
        require_int(self.n_digits, "n_digits", 1, 9)
        require(self.n_operands * self.n_digits <= 18, "n_operands * n_digits",
                self.n_operands * self.n_digits, "at most 18 (the input space must fit in int64)")
        require_choice(self.answer_order, "answer_order", ("msb", "lsb"))
        require_int(self.n_train, "n_train", 1)
        require_int(self.n_test, "n_test", 1)
        require(self.n_train + self.n_test <= self.input_space, "n_train + n_test",
                self.n_train + self.n_test,
                f"at most {self.input_space}, the number of distinct inputs with "
                f"{self.n_operands} operands of {self.n_digits} digits")
        require_number(self.noise_rate, "noise_rate", 0.0, 1.0)
        require_choice(self.noise_mode, "noise_mode", NOISE_MODES["fda"])

    @property
    def input_space(self) -> int:
        return 10 ** (self.n_digits * self.n_operands)

    @property
    def max_sum(self) -> int:
        return self.n_operands * (10**self.n_digits - 1)

    @property
    def answer_width(self) -> int:
        return len(str(self.max_sum))


@dataclass(frozen=True)
class FDALayout:
    """Where each token sits in an FDA sequence.

    >>> lay = FDALayout(FDAConfig())
    >>> lay.operand_digit_pos(0, 3), lay.operand_digit_pos(1, 0), lay.eq_pos, lay.seq_len
    (1, 9, 10, 16)
    >>> lay.answer_token_pos(4), lay.predicting_pos(4)
    (11, 10)
    """

    config: FDAConfig

    @property
    def eq_pos(self) -> int:
        c = self.config
        return c.n_operands * (c.n_digits + 1)

    @property
    def seq_len(self) -> int:
        return self.eq_pos + self.config.answer_width + 1

    def operand_digit_pos(self, operand: int, column: int) -> int:
        """Position of operand ``operand``'s digit in ``column`` (0 = units)."""
        c = self.config
        if not 0 <= operand < c.n_operands or not 0 <= column < c.n_digits:
            raise IndexError(f"operand {operand} / column {column} out of range for {c}")
        return 1 + operand * (c.n_digits + 1) + (c.n_digits - 1 - column)

    def plus_pos(self, k: int) -> int:
        """Position of the ``+`` after operand ``k``."""
        return 1 + k * (self.config.n_digits + 1) + self.config.n_digits

    def answer_column(self, index: int) -> int:
        """The column (power of ten) of the ``index``-th answer token."""
        w = self.config.answer_width
        return w - 1 - index if self.config.answer_order == "msb" else index

    def answer_token_pos(self, column: int) -> int:
        """Position of the answer token that holds ``column``."""
        w = self.config.answer_width
        if not 0 <= column < w:
            raise IndexError(f"answer column {column} out of range [0, {w})")
        index = w - 1 - column if self.config.answer_order == "msb" else column
        return self.eq_pos + 1 + index

    def predicting_pos(self, column: int) -> int:
        """Position whose logits predict the answer digit of ``column``."""
        return self.answer_token_pos(column) - 1

    @property
    def answer_pos(self) -> list[int]:
        return [self.eq_pos + i for i in range(self.config.answer_width)]

    def describe(self) -> dict[str, list[int] | int]:
        """Every named position, for docs and ``memlens data``."""
        c = self.config
        out: dict[str, list[int] | int] = {"bos": 0}
        for k in range(c.n_operands):
            out[f"operand_{k}_digits_msb_first"] = [
                self.operand_digit_pos(k, col) for col in reversed(range(c.n_digits))
            ]
        out["plus"] = [self.plus_pos(k) for k in range(c.n_operands - 1)]
        out["eq"] = self.eq_pos
        out["answer_tokens"] = [self.eq_pos + 1 + i for i in range(c.answer_width)]
        out["answer_pos (predicting)"] = self.answer_pos
        return out


class FDATask(TaskBase):
    """Generator of FDA datasets with intermediates and label noise.

    >>> task = FDATask(FDAConfig(n_train=200, n_test=50))
    >>> data = task.generate(seed=0)
    >>> int(data.train.is_noisy.sum())
    10
    """

    name = "fda"
    claims = ALL_CLAIMS
    heuristic_families = fda_analysis.HEURISTIC_FAMILIES

    def __init__(self, config: FDAConfig | None = None):
        self.config = config or FDAConfig()
        self.layout = FDALayout(self.config)
        self.tokenizer = MemlensTokenizer(DIGITS + ["+", "="], name="memlens-fda")
        self._digit0 = self.tokenizer.token_to_id("0")

    @property
    def seq_len(self) -> int:
        return self.layout.seq_len

    @property
    def intermediate_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.intermediates())

    @property
    def answer_pos(self) -> list[int]:
        return self.layout.answer_pos

    # -- the task protocol (memlens.tasks.protocol) ---------------------------------------------
    def intermediates(self) -> list[Intermediate]:
        c = self.config
        both = ("change", "preserve")
        specs = [
            Intermediate("operand", tuple(range(c.n_operands)), "the operand values", probe=False),
            Intermediate("column_sum", tuple(range(c.n_digits)),
                         "sum of the operands' digits in column c (0 = units)",
                         claims=(3, 4, 5), kinds=both),
            Intermediate("carry", tuple(range(c.n_digits + 1)),
                         "carry into column c (carry[0] is always 0)", claims=(3,), kinds=both,
                         recipe_columns=tuple(range(1, c.n_digits + 1))),
            Intermediate("answer_digit", tuple(range(c.answer_width)), "digit of the true sum in column c"),
            Intermediate("sum", (None,), "the true sum", probe=False),
        ]
        if c.n_operands > 2:
            specs.append(Intermediate("partial_sum", tuple(range(c.n_operands - 2)),
                                      "running sum of the first j + 2 operands", kinds=("change",)))
        return specs

    def prompt_positions(self) -> list[int]:
        lay = self.layout
        return sorted(lay.operand_digit_pos(k, col) for k in range(self.config.n_operands)
                      for col in range(self.config.n_digits))

    def answer_slots_revealing(self, name: str, column: int | None) -> list[int]:
        """An answer token of column j reveals the intermediates that involve column j:
        ``column_sum[c]`` and ``answer_digit[c]`` involve column c, ``carry[c]`` columns c - 1
        and c; operands, partial sums and the sum involve every column."""
        self.check_entry(name, column)
        width = self.config.answer_width
        if name in ("column_sum", "answer_digit"):
            involved = {column}
        elif name == "carry":
            involved = {column - 1, column} & set(range(width))
        else:
            involved = set(range(width))
        return [i for i in range(width) if self.layout.answer_column(i) in involved]

    def checked_intermediates(self) -> tuple[str, ...]:
        return fda_analysis.CHECKED

    def counterfactuals(self, examples, name, column, kind, rng):
        return fda_analysis.counterfactuals(self, examples, name, column, kind, rng)

    def neighbours(self, dataset, noisy, seed, max_per_example=4):
        return fda_analysis.neighbours(self, dataset, noisy, seed, max_per_example)

    def neuron_features(self, examples):
        return fda_analysis.neuron_features(examples)

    def input_slots(self):
        digits = [self.tokenizer.token_to_id(str(d)) for d in range(10)]
        singles, groups = {}, {}
        for k in range(self.config.n_operands):
            names = [f"a{k}.c{col}" for col in range(self.config.n_digits)]
            for col, name in enumerate(names):
                singles[name] = ([self.layout.operand_digit_pos(k, col)], digits)
            groups[f"operand_{k}"] = names
        return singles, groups

    def answer_columns(self) -> list[int]:
        return [self.layout.answer_column(i) for i in range(self.config.answer_width)]

    def describe_positions(self):
        return self.layout.describe()

    # -- generation ---------------------------------------------------------------------------
    def generate(self, seed: int) -> Dataset:
        c = self.config
        data_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        codes = data_rng.choice(c.input_space, size=c.n_train + c.n_test, replace=False)
        scale = np.int64(10**c.n_digits)
        operands = np.stack([(codes // scale**k) % scale for k in range(c.n_operands)], axis=1)
        totals = operands.sum(axis=1)

        is_noisy = np.zeros(len(codes), dtype=bool)
        is_noisy[: c.n_train] = choose_noisy(c.n_train, c.noise_rate, noise_rng)
        label_values = totals.copy()
        label_values[is_noisy] = self._wrong_sums(totals[is_noisy], noise_rng)

        everything = self._examples(operands, label_values, is_noisy)
        train, test = everything[: c.n_train], everything[c.n_train:]
        stats = {
            "n_train": c.n_train, "n_test": c.n_test, "n_noisy": int(is_noisy.sum()),
            "seq_len": self.layout.seq_len, "vocab_size": len(self.tokenizer),
        }
        return Dataset(train=train, test=test, task_name=self.name, seed=seed, stats=stats,
                       task_config=asdict(c))

    def _wrong_sums(self, totals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        if c.noise_mode == "random":  # any attainable sum except the true one
            return draw_other(totals, c.max_sum + 1, rng)
        # "digit": exactly one answer digit replaced by another digit
        columns = rng.integers(0, c.answer_width, size=len(totals))
        place = np.int64(10) ** columns
        old = (totals // place) % 10
        new = draw_other(old, 10, rng)
        return totals + (new - old) * place

    def _digits(self, values: np.ndarray, width: int) -> np.ndarray:
        """(n,) integers to (n, width) digits, column c = 10**c."""
        return (values[:, None] // (np.int64(10) ** np.arange(width))) % 10

    def _answer_tokens(self, values: np.ndarray) -> np.ndarray:
        digits = self._digits(values, self.config.answer_width)
        if self.config.answer_order == "msb":
            digits = digits[:, ::-1]
        return digits + self._digit0

    def _examples(self, operands: np.ndarray, label_values: np.ndarray, is_noisy: np.ndarray) -> Examples:
        c, lay = self.config, self.layout
        n = len(operands)
        totals = operands.sum(axis=1)
        op_digits = np.stack([self._digits(operands[:, k], c.n_digits) for k in range(c.n_operands)], 1)
        column_sum = op_digits.sum(axis=1)
        carry = np.zeros((n, c.n_digits + 1), dtype=np.int64)
        for col in range(c.n_digits):
            carry[:, col + 1] = (column_sum[:, col] + carry[:, col]) // 10

        tokens = np.zeros((n, lay.seq_len), dtype=np.int64)
        tokens[:, 0] = self.tokenizer.bos_id
        for k in range(c.n_operands):
            for col in range(c.n_digits):
                tokens[:, lay.operand_digit_pos(k, col)] = op_digits[:, k, col] + self._digit0
            if k < c.n_operands - 1:
                tokens[:, lay.plus_pos(k)] = self.tokenizer.token_to_id("+")
        tokens[:, lay.eq_pos] = self.tokenizer.token_to_id("=")
        labels = self._answer_tokens(label_values)
        true_labels = self._answer_tokens(totals)
        tokens[:, lay.eq_pos + 1:] = labels  # teacher forcing on the trained label

        intermediates = {
            "operand": operands,
            "column_sum": column_sum,
            "carry": carry,
            "answer_digit": self._digits(totals, c.answer_width),
            "sum": totals,
        }
        if c.n_operands > 2:
            intermediates["partial_sum"] = np.cumsum(operands, axis=1)[:, 1:-1]
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
        return Examples(
            tokens=as_tensor(tokens),
            answer_pos=torch.tensor(lay.answer_pos, dtype=torch.long),
            labels=as_tensor(labels),
            true_labels=as_tensor(true_labels),
            is_noisy=torch.from_numpy(is_noisy.copy()),
            intermediates={k: as_tensor(v) for k, v in intermediates.items()},
            task_name=self.name,
        )

    # -- reading examples back ----------------------------------------------------------------
    def record_intermediate(self, name: str, value: Tensor) -> Any:
        """Numbers, but answer digits as the token strings they are written with."""
        row = value.tolist()
        return [str(d) for d in row] if name == "answer_digit" else row
