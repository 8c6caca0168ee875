"""Which examples each run-level analysis uses: seeded, disjoint subsets of a run's splits.

Every function takes a loaded run and returns :class:`~memlens.tasks.Examples`; only examples of
the kind that can carry noise are used (``TaskBase.analysis_mask``; THR: two-hop queries).
"""

from __future__ import annotations

import dataclasses

import torch

from memlens.analysis.common import AnalysisError, analysis_subset
from memlens.tasks.base import Examples
from memlens.training.metrics import with_answer


def subset(examples: Examples, n: int, seed: int) -> Examples:
    """A fixed seeded subset of at most ``n`` examples (all of a smaller batch), in order.

    >>> from memlens.tasks import make_task
    >>> ex = make_task("fda", preset="tiny").generate(0).train
    >>> len(subset(ex, 10, seed=0)), torch.equal(subset(ex, 10, 0).tokens, subset(ex, 10, 0).tokens)
    (10, True)
    """
    if len(examples) <= n:
        return examples
    gen = torch.Generator().manual_seed(seed)
    return examples[torch.randperm(len(examples), generator=gen)[:n].sort().values]


def clean_splits(run, sizes: dict[str, int]) -> dict[str, Examples]:
    """Disjoint seeded subsets of the clean training examples, e.g. ``{"fit": 4000, "select":
    1000, "heldout": 1000}``; scaled down in proportion when there are fewer."""
    clean = analysis_subset(run.splits["train_clean"])
    if len(clean) == 0:
        raise AnalysisError(f"{run.path} has no clean training examples (a pure-memorizer "
                            "reference?): this analysis compares clean and noisy examples")
    total = sum(sizes.values())
    scale = min(1.0, len(clean) / total)
    order = torch.randperm(len(clean), generator=torch.Generator().manual_seed(run.config.seed))
    out, start = {}, 0
    for name, size in sizes.items():
        n = int(size * scale)
        out[name] = clean[order[start:start + n].sort().values]
        start += n
    return out


def noisy_examples(run, n: int) -> Examples:
    """At most ``n`` noisy training examples (seeded)."""
    noisy = analysis_subset(run.splits["train_noisy"])
    if len(noisy) == 0:
        raise AnalysisError(f"{run.path} has no noisy training examples: nothing was memorized")
    return subset(noisy, n, run.config.seed)


def true_label_forced(examples: Examples) -> Examples:
    """The same examples with their true labels teacher-forced in the answer slots."""
    return dataclasses.replace(examples, tokens=with_answer(examples, examples.true_labels))


def neuron_examples(run, n: int = 10_000) -> Examples:
    """Every noisy training example and clean ones up to ``n`` in all."""
    train = analysis_subset(run.dataset.train)
    noisy = train[train.is_noisy]
    clean = subset(train[~train.is_noisy], max(0, n - len(noisy)), run.config.seed)
    return Examples.concat([clean, noisy]) if len(noisy) else clean


def group(run, split: str, n: int) -> Examples:
    """A seeded subset of one split's analysable examples."""
    return subset(analysis_subset(run.splits[split]), n, run.config.seed)
