"""What the analyses ask of the THR task: bridge counterfactuals, neighbours, neuron features.

Both bridge recipes edit **the head entity only** (position 1), so a changing and a preserving
edit of the same query touch the same token:

* *change*: ``e'`` whose ``r1``-tail ``b' != b`` has relation ``r2`` (preferring a different
  answer where one exists);
* *preserve*: ``e' != e`` with ``r1(e') = b``: same bridge, same answer.

The graph is read from the atomic facts' *true* tails (``answer_entity`` of one-hop examples),
so the recipes hold for runs whose atomic labels are noisy too (the pure-memorizer reference).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from memlens.tasks.base import Dataset, Examples
from memlens.tasks.protocol import CounterfactualPairs, Neighbours, TaskError, check_kind

CHECKED = ("head_entity", "relation_1", "relation_2", "bridge_entity", "answer_entity")


def tail_table(task, train: Examples) -> np.ndarray:
    """``tail[e, r]`` = r(e) from the atomic facts, -1 where entity e lacks relation r."""
    cfg = task.config
    facts = {k: v.numpy() for k, v in train.intermediates.items()}
    atomic = facts["n_hops"] == 1
    tail = np.full((cfg.n_entities, cfg.n_relations), -1, dtype=np.int64)
    tail[facts["head_entity"][atomic], facts["relation_1"][atomic]] = facts["answer_entity"][atomic]
    return tail


def counterfactuals(task, examples: Examples, name: str, column: int | None, kind: str,
                    rng: np.random.Generator, train: Examples) -> CounterfactualPairs:
    """The bridge recipes (module docstring); ``train`` holds the atomic facts."""
    check_kind(kind)
    task.check_entry(name, column)
    if name != "bridge_entity":
        raise TaskError(f"THR has counterfactual recipes for 'bridge_entity' only, not {name!r}")
    inter = {k: v.numpy() for k, v in examples.intermediates.items()}
    if (inter["n_hops"] != 2).any():
        raise TaskError("bridge counterfactuals need two-hop queries; "
                        f"{int((inter['n_hops'] != 2).sum())} examples are atomic facts")
    tail = tail_table(task, train)
    n_entities = task.config.n_entities
    head, r1, r2 = inter["head_entity"], inter["relation_1"], inter["relation_2"]
    bridge, answer = inter["bridge_entity"], inter["answer_entity"]
    new_bridge = tail[:, r1].T  # (n, E): the r1-tail of every candidate head
    new_answer = np.where(new_bridge >= 0, tail[np.maximum(new_bridge, 0), r2[:, None]], -1)
    other_head = np.arange(n_entities)[None] != head[:, None]
    if kind == "preserve":
        use = other_head & (new_bridge == bridge[:, None])
    else:
        ok = other_head & (new_bridge >= 0) & (new_bridge != bridge[:, None]) & (new_answer >= 0)
        better = ok & (new_answer != answer[:, None])
        use = np.where(better.any(1, keepdims=True), better, ok)
    valid = use.any(1)
    pick = (rng.random(use.shape) * use).argmax(1)
    rows = np.nonzero(valid)[0]
    parts = {
        "head_entity": pick[rows], "relation_1": r1[rows], "relation_2": r2[rows],
        "bridge_entity": new_bridge[rows, pick[rows]], "answer_entity": new_answer[rows, pick[rows]],
    }
    valid_t = torch.from_numpy(valid)
    counterfactual = task._examples(parts, parts["answer_entity"], np.zeros(len(rows), dtype=bool))
    counterfactual.origin = examples.origin
    if kind == "change":
        intended, free = [("head_entity", None), ("bridge_entity", None)], ("answer_entity",)
    else:
        intended, free = [("head_entity", None)], ()
    return CounterfactualPairs("bridge_entity", None, examples[valid_t], counterfactual, valid_t,
                               intended, free, answer_slots=[0], kind=kind, checked=CHECKED,
                               edited_positions=[1])


def neighbours(task, dataset: Dataset, noisy: Examples, seed: int,
               max_per_example: int = 4) -> Neighbours:
    """Test queries sharing ``(e, r1)`` (same bridge) or ``(b, r2)`` (same second hop) with each
    noisy query; at most ``max_per_example`` of each relation per noisy query."""
    test = {k: v.numpy() for k, v in dataset.test.intermediates.items()}
    by_first: dict[tuple[int, int], list[int]] = {}
    by_second: dict[tuple[int, int], list[int]] = {}
    for i, (e, r1, b, r2) in enumerate(zip(test["head_entity"], test["relation_1"],
                                           test["bridge_entity"], test["relation_2"])):
        by_first.setdefault((int(e), int(r1)), []).append(i)
        by_second.setdefault((int(b), int(r2)), []).append(i)
    rng = np.random.default_rng(seed)
    inter = {k: v.numpy() for k, v in noisy.intermediates.items()}
    rows, sources, relation = [], [], []
    for i in range(len(noisy)):
        if inter["n_hops"][i] != 2:
            continue
        for label, table, key in (("same (e, r1)", by_first, (inter["head_entity"][i], inter["relation_1"][i])),
                                  ("same (b, r2)", by_second, (inter["bridge_entity"][i], inter["relation_2"][i]))):
            found = table.get((int(key[0]), int(key[1])), [])
            for j in rng.permutation(len(found))[:max_per_example]:
                rows.append(found[j])
                sources.append(i)
                relation.append(label)
    index = torch.tensor(rows, dtype=torch.long)
    source = torch.tensor(sources, dtype=torch.long)
    return Neighbours(dataset.test[index], source, noisy.labels[source], relation)


def neuron_features(examples: Examples) -> dict[str, tuple[str, Tensor]]:
    """Which entity or relation fills each slot, and the bridge and answer entities (families
    ``entity`` and ``relation``; not arithmetic heuristics)."""
    inter = examples.intermediates
    names = {"head entity": ("entity", "head_entity"), "relation 1": ("relation", "relation_1"),
             "relation 2": ("relation", "relation_2"), "bridge entity": ("entity", "bridge_entity"),
             "answer entity": ("entity", "answer_entity")}
    return {name: (family, inter[key].long().clamp(min=0)) for name, (family, key) in names.items()}
