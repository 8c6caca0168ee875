"""SUM3, a task defined outside memlens: ``(a + b + c) mod 10`` through the intermediate ``a + b``.

This file is the code of docs/own-task.md. It declares everything the task protocol asks for
(memlens/tasks/protocol.py), so that training, every analysis, the report and the claims
scorecard run on it without any change to memlens. Register it with ``import sum3`` (it calls
``register_task`` on import) or, for the command line, ``MEMLENS_TASK_MODULES=path/to/sum3.py``.

Sequence layout::

    pos:  0      1  2  3  4  5
    tok:  <bos>  a  b  c  =  y        y = (a + b + c) mod 10, answer_pos = [4]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from memlens.config import require_number
from memlens.presets import Preset
from memlens.tasks import Dataset, Examples, Intermediate, MemlensTokenizer, TaskBase, register_task
from memlens.tasks.noise import choose_noisy, draw_other
from memlens.tasks.protocol import CounterfactualPairs, check_kind


@dataclass(frozen=True)
class Sum3Config:
    """Every (a, b, c) of digits is an input; ``train_fraction`` of them are trained on."""

    train_fraction: float = 0.7
    noise_rate: float = 0.1

    def __post_init__(self) -> None:
        require_number(self.train_fraction, "train_fraction", 0.0, 1.0, low_open=True, high_open=True)
        require_number(self.noise_rate, "noise_rate", 0.0, 1.0)


class Sum3Task(TaskBase):
    name = "sum3"
    claims = (1, 2, 3, 4, 5, 7)  # no arithmetic heuristic features: claim 6 does not apply
    seq_len = 6
    answer_pos = [4]

    def __init__(self, config: Sum3Config | None = None):
        self.config = config or Sum3Config()
        self.tokenizer = MemlensTokenizer([str(d) for d in range(10)] + ["="], name="memlens-sum3")
        self.zero = self.tokenizer.token_to_id("0")

    # -- data -------------------------------------------------------------------------------
    def generate(self, seed: int) -> Dataset:
        split_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        order = split_rng.permutation(1000)
        digits = np.stack([order // 100, order // 10 % 10, order % 10], 1)
        n_train = int(round(self.config.train_fraction * 1000))
        is_noisy = np.zeros(1000, dtype=bool)
        is_noisy[:n_train] = choose_noisy(n_train, self.config.noise_rate, noise_rng)
        labels = digits.sum(1) % 10
        labels[is_noisy] = draw_other(labels[is_noisy], 10, noise_rng)
        everything = self.examples(digits, labels, is_noisy)
        return Dataset(train=everything[:n_train], test=everything[n_train:], task_name=self.name,
                       seed=seed, stats={"n_train": n_train, "n_noisy": int(is_noisy.sum())},
                       task_config=asdict(self.config))

    def examples(self, digits: np.ndarray, labels: np.ndarray, is_noisy: np.ndarray) -> Examples:
        n = len(digits)
        tokens = np.concatenate([np.full((n, 1), self.tokenizer.bos_id), digits + self.zero,
                                 np.full((n, 1), self.tokenizer.token_to_id("=")),
                                 labels[:, None] + self.zero], 1)
        t = lambda x: torch.as_tensor(np.ascontiguousarray(x), dtype=torch.long)  # noqa: E731
        return Examples(tokens=t(tokens), answer_pos=torch.tensor(self.answer_pos),
                        labels=t(labels[:, None] + self.zero),
                        true_labels=t(digits.sum(1)[:, None] % 10 + self.zero),
                        is_noisy=torch.from_numpy(is_noisy.copy()),
                        intermediates={"digits": t(digits), "a_plus_b": t(digits[:, 0] + digits[:, 1])},
                        task_name=self.name)

    # -- the task protocol -------------------------------------------------------------------
    def intermediates(self) -> list[Intermediate]:
        return [Intermediate("digits", (0, 1, 2), "a, b, c", probe=False),
                Intermediate("a_plus_b", (None,), "a + b (0..18), the intermediate",
                             claims=(3, 4, 5), kinds=("change", "preserve"))]

    def prompt_positions(self) -> list[int]:
        return [1, 2, 3]

    def counterfactuals(self, examples, name, column, kind, rng) -> CounterfactualPairs:
        """Edit a and b: *change* a + b, or *preserve* it with (a + d, b - d)."""
        check_kind(kind)
        self.check_entry(name, column)
        digits = examples.intermediates["digits"].numpy()
        a, b = digits[:, :1], digits[:, 1:2]
        grid = np.arange(100)
        na, nb = (grid // 10)[None], (grid % 10)[None]
        same = na + nb == a + b
        ok = (na != a) & (nb != b) & (same if kind == "preserve" else ~same)
        valid = ok.any(1)
        pick = (rng.random(ok.shape) * ok).argmax(1)
        new = digits.copy()
        new[:, 0], new[:, 1] = pick // 10, pick % 10
        new = new[valid]
        cf = self.examples(new, new.sum(1) % 10, np.zeros(len(new), dtype=bool))
        cf.origin = examples.origin
        keep = torch.from_numpy(valid)
        return CounterfactualPairs(name, column, examples[keep], cf, keep,
                                   intended=[("a_plus_b", None)] if kind == "change" else [],
                                   answer_slots=[0], kind=kind, checked=("a_plus_b",),
                                   edited_positions=[1, 2])

    def input_slots(self):
        digits = [self.zero + d for d in range(10)]
        return {"a": ([1], digits), "b": ([2], digits), "c": ([3], digits)}, {}


register_task("sum3", Sum3Config, Sum3Task, presets={
    "tiny": Preset(model=dict(n_layers=1, d_model=32, n_heads=2),
                   train=dict(steps=60, batch_size=64, lr=3e-3, weight_decay=0.0, warmup_steps=5,
                              eval_every=20)),
    "small": Preset(model=dict(n_layers=2, d_model=64, n_heads=4),
                    train=dict(steps=1500, batch_size=128, lr=3e-3, weight_decay=0.1,
                               warmup_steps=50, eval_every=100)),
})
