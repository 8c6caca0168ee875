"""MODADD: modular addition with label noise, ``a + b mod p`` (after Doshi et al. 2024, "To grok
or not to grok: disentangling generalization and memorization on corrupted algorithmic
datasets", arXiv 2310.13061).

Every pair ``(a, b)`` of residues is an input; a seeded ``train_fraction`` of them is the training
set, the rest the test set. A ``noise_rate`` share of the training labels is replaced by another
residue, drawn uniformly.

Sequence layout (one token per residue)::

    pos:  0      1  2  3  4  5
    tok:  <bos>  a  +  b  =  c          answer_pos = [4]

Intermediates: ``operand`` (n, 2), ``raw_sum`` (n,) = ``a + b`` before the reduction (the answer
is ``raw_sum mod p``), ``wraps`` (n,) = whether ``a + b >= p``, a carry-like bit.

Counterfactual recipes edit both operand tokens: *change* gives another ``raw_sum`` (so another
answer), *preserve* ``(a + d, b - d)`` keeps it (and the answer). Its neuron features are the
operands' and the sum's residues, and its inputs are cyclic, which the Fourier / inverse
participation ratio analysis (:mod:`memlens.analysis.fourier`) uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from memlens.config import require, require_int, require_number
from memlens.tasks.base import Dataset, Examples
from memlens.tasks.noise import choose_noisy, draw_other
from memlens.tasks.protocol import CounterfactualPairs, Intermediate, TaskBase, TaskError, check_kind
from memlens.tasks.tokenizer import MemlensTokenizer

CHECKED = ("raw_sum", "wraps")


@dataclass(frozen=True)
class ModAddConfig:
    """The MODADD task.

    >>> ModAddConfig(p=13, train_fraction=0.5).n_train
    84
    """

    p: int = 59
    train_fraction: float = 0.5
    noise_rate: float = 0.05

    def __post_init__(self) -> None:
        require_int(self.p, "p", 3, 1000)
        require_number(self.train_fraction, "train_fraction", 0.0, 1.0, low_open=True, high_open=True)
        require_number(self.noise_rate, "noise_rate", 0.0, 1.0)
        require(1 <= self.n_train < self.p**2, "train_fraction", self.train_fraction,
                f"a fraction that leaves both a training and a test set of the {self.p**2} pairs")

    @property
    def n_train(self) -> int:
        return int(round(self.train_fraction * self.p**2))


class ModAddTask(TaskBase):
    """Generator of modular-addition datasets with label noise.

    >>> data = ModAddTask(ModAddConfig(p=13, train_fraction=0.5, noise_rate=0.1)).generate(0)
    >>> len(data.train), len(data.test), int(data.train.is_noisy.sum())
    (84, 85, 8)
    """

    name = "modadd"
    claims = (1, 2, 3, 4, 5, 7)
    seq_len = 6
    answer_pos = [4]

    def __init__(self, config: ModAddConfig | None = None):
        self.config = config or ModAddConfig()
        self.tokenizer = MemlensTokenizer([str(i) for i in range(self.config.p)] + ["+", "="],
                                          name="memlens-modadd")
        self._zero = self.tokenizer.token_to_id("0")

    def generate(self, seed: int) -> Dataset:
        c = self.config
        split_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        order = split_rng.permutation(c.p**2)
        a, b = order // c.p, order % c.p
        is_noisy = np.zeros(c.p**2, dtype=bool)
        is_noisy[: c.n_train] = choose_noisy(c.n_train, c.noise_rate, noise_rng)
        labels = (a + b) % c.p
        labels[is_noisy] = draw_other(labels[is_noisy], c.p, noise_rng)
        everything = self._examples(np.stack([a, b], 1), labels, is_noisy)
        stats = {"n_train": c.n_train, "n_test": c.p**2 - c.n_train, "n_noisy": int(is_noisy.sum()),
                 "seq_len": self.seq_len, "vocab_size": len(self.tokenizer)}
        return Dataset(train=everything[: c.n_train], test=everything[c.n_train:], task_name=self.name,
                       seed=seed, stats=stats, task_config=asdict(c))

    def _examples(self, operands: np.ndarray, labels: np.ndarray, is_noisy: np.ndarray) -> Examples:
        n, p = len(operands), self.config.p
        a, b = operands[:, 0], operands[:, 1]
        tokens = np.stack([np.full(n, self.tokenizer.bos_id), a + self._zero,
                           np.full(n, self.tokenizer.token_to_id("+")), b + self._zero,
                           np.full(n, self.tokenizer.token_to_id("=")), labels + self._zero], 1)
        as_tensor = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))  # noqa: E731
        return Examples(
            tokens=as_tensor(tokens), answer_pos=torch.tensor(self.answer_pos),
            labels=as_tensor(labels[:, None] + self._zero),
            true_labels=as_tensor(((a + b) % p)[:, None] + self._zero),
            is_noisy=torch.from_numpy(is_noisy.copy()),
            intermediates={"operand": as_tensor(operands), "raw_sum": as_tensor(a + b),
                           "wraps": as_tensor((a + b >= p).astype(np.int64))},
            task_name=self.name)

    # -- the task protocol ---------------------------------------------------------------------
    def intermediates(self) -> list[Intermediate]:
        return [Intermediate("operand", (0, 1), "the two residues", probe=False),
                Intermediate("raw_sum", (None,), "a + b before the reduction mod p", claims=(3, 4, 5),
                             kinds=("change", "preserve")),
                Intermediate("wraps", (None,), "whether a + b >= p (a carry)", claims=(3,))]

    def prompt_positions(self) -> list[int]:
        return [1, 2, 3]

    def answer_slots_revealing(self, name, column):
        self.check_entry(name, column)
        return [0]

    def checked_intermediates(self) -> tuple[str, ...]:
        return CHECKED

    def counterfactuals(self, examples, name, column, kind, rng) -> CounterfactualPairs:
        check_kind(kind)
        spec = self.check_entry(name, column)
        if not spec.has_recipe(column, kind):
            raise TaskError(f"MODADD has no {kind!r} recipe for {spec.label(column)}")
        p = self.config.p
        ops = examples.intermediates["operand"].numpy()
        a, b = ops[:, :1], ops[:, 1:]
        grid = np.arange(p * p)
        na, nb = (grid // p)[None], (grid % p)[None]
        # change: another answer (a raw sum differing by p alone would keep it); preserve: the same raw sum
        sums_ok = (na + nb == a + b) if kind == "preserve" else ((na + nb) % p != (a + b) % p)
        ok = (na != a) & (nb != b) & sums_ok
        valid = ok.any(1)
        choice = (rng.random(ok.shape) * ok).argmax(1)
        new = np.stack([grid[choice] // p, grid[choice] % p], 1)[valid]
        cf = self._examples(new, (new[:, 0] + new[:, 1]) % p, np.zeros(len(new), dtype=bool))
        cf.origin = examples.origin
        valid_t = torch.from_numpy(valid)
        intended = [("raw_sum", None)] if kind == "change" else []
        return CounterfactualPairs(name, column, examples[valid_t], cf, valid_t, intended,
                                   free=("wraps",) if kind == "change" else (), answer_slots=[0],
                                   kind=kind, checked=CHECKED, edited_positions=[1, 3])

    def neuron_features(self, examples: Examples) -> dict:
        ops, p = examples.intermediates["operand"].long(), self.config.p
        total = (ops[:, 0] + ops[:, 1]) % p
        return {"a": ("residue", ops[:, 0]), "b": ("residue", ops[:, 1]), "a + b mod p": ("residue", total)}

    def input_slots(self):
        values = [self._zero + i for i in range(self.config.p)]
        return {"a": ([1], values), "b": ([3], values)}, {}

    def reference_overrides(self) -> dict:
        return {"noise_rate": 1.0}

    def cyclic_inputs(self) -> dict[str, tuple[int, int]]:
        """Inputs whose values form a cyclic group: name -> (position, order), for the Fourier
        analysis."""
        return {"a": (1, self.config.p), "b": (3, self.config.p)}
