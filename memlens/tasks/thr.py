"""THR: two-hop relational reasoning with noisy labels (after Wang et al. 2024, "Grokked
transformers are implicit reasoners").

A random knowledge graph: ``n_entities`` entities, ``n_relations`` relations, and each entity has
``relations_per_entity`` (K) outgoing relations, each with one tail (functional). Atomic facts are
``(e, r) -> r(e)``; two-hop queries are ``(e, r1, r2) -> r2(r1(e))`` with bridge entity
``b = r1(e)``. Training holds every atomic fact plus ``round(phi * n_atomic)`` two-hop queries;
the test set holds held-out two-hop queries, whose atomic facts are therefore all in training.

Sequence layout (one token per entity and relation; the answer is one token)::

    pos:   0      1   2    3        4
    two-hop: <bos>  e   r1   r2       answer      answer_pos = [3]
    atomic:  <bos>  e   r    <none>   r(e)

Atomic facts use the ``<none>`` marker in place of a second relation so that every example shares
one layout (a fixed ``answer_pos``). Label noise touches two-hop training queries only.

Intermediates (entity and relation *indices*, not token ids; ``task.entity_token_id`` converts):

====================  =======  ==========================================================
name                  shape    meaning
====================  =======  ==========================================================
``head_entity``       (n,)     e
``relation_1``        (n,)     r1
``relation_2``        (n,)     r2, or -1 for an atomic fact
``bridge_entity``     (n,)     r1(e) (for an atomic fact: its tail)
``answer_entity``     (n,)     the true answer r2(r1(e)) (for an atomic fact: its tail)
``n_hops``            (n,)     1 for an atomic fact, 2 for a two-hop query
====================  =======  ==========================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from memlens.config import require, require_choice, require_int, require_number
from memlens.tasks import thr_analysis
from memlens.tasks.base import Dataset, Examples
from memlens.tasks.noise import NOISE_MODES, choose_noisy, draw_other
from memlens.tasks.protocol import Intermediate, TaskBase
from memlens.tasks.tokenizer import MemlensTokenizer

NO_RELATION = "<none>"
ANSWER_POS = 3


@dataclass(frozen=True)
class THRConfig:
    """The THR task.

    >>> THRConfig(n_entities=50, relations_per_entity=4, n_relations=4, phi=2.0, n_test=100).n_atomic
    200
    """

    n_entities: int = 200
    n_relations: int = 20
    relations_per_entity: int = 20
    phi: float = 18.0
    n_test: int = 2_000
    noise_rate: float = 0.05
    noise_mode: str = "random"
    # Noise on the atomic facts too (the pure-memorizer reference: every label random, so no
    # bridge can be learned from the data). Off: noise touches two-hop queries only.
    noise_atomic: bool = False

    def __post_init__(self) -> None:
        # at least 3 entities: a noisy answer must differ from both the true answer and the bridge
        require_int(self.n_entities, "n_entities", 3)
        require_int(self.n_relations, "n_relations", 1)
        require_int(self.relations_per_entity, "relations_per_entity", 1, self.n_relations
                    if isinstance(self.n_relations, int) else None)
        require_number(self.phi, "phi", 0.0, None, low_open=True)
        require_int(self.n_test, "n_test", 1)
        max_phi = (self.n_two_hop - self.n_test) / self.n_atomic
        require(self.n_inferred_train + self.n_test <= self.n_two_hop, "phi", self.phi,
                f"at most {max_phi:.3f}: the graph has {self.n_two_hop} two-hop queries, "
                f"{self.n_test} go to the test set, and phi * {self.n_atomic} atomic facts "
                "must fit in the rest")
        require_number(self.noise_rate, "noise_rate", 0.0, 1.0)
        require_choice(self.noise_mode, "noise_mode", NOISE_MODES["thr"])
        require_choice(self.noise_atomic, "noise_atomic", (False, True))

    @property
    def n_atomic(self) -> int:
        return self.n_entities * self.relations_per_entity

    @property
    def n_two_hop(self) -> int:
        return self.n_entities * self.relations_per_entity**2

    @property
    def n_inferred_train(self) -> int:
        return int(round(self.phi * self.n_atomic))


class THRTask(TaskBase):
    """Generator of THR datasets with bridge entities and label noise.

    >>> task = THRTask(THRConfig(n_entities=30, n_relations=5, relations_per_entity=5,
    ...                          phi=3.0, n_test=50))
    >>> data = task.generate(seed=0)
    >>> len(data.train), int(data.train.is_noisy.sum())
    (600, 22)
    """

    name = "thr"

    def __init__(self, config: THRConfig | None = None):
        self.config = config or THRConfig()
        c = self.config
        entities = [f"e{i}" for i in range(c.n_entities)]
        relations = [f"r{i}" for i in range(c.n_relations)]
        self.tokenizer = MemlensTokenizer(entities + relations + [NO_RELATION], name="memlens-thr")
        self._entity0 = self.tokenizer.token_to_id("e0")
        self._relation0 = self.tokenizer.token_to_id("r0")
        self.answer_pos = [ANSWER_POS]

    seq_len = ANSWER_POS + 2
    claims = (1, 2, 3, 4, 5, 7)  # no arithmetic heuristics: claim 6 does not apply

    intermediate_names = ("head_entity", "relation_1", "relation_2", "bridge_entity",
                          "answer_entity", "n_hops")

    # -- the task protocol (memlens.tasks.protocol) ---------------------------------------------
    def intermediates(self) -> list[Intermediate]:
        return [
            Intermediate("head_entity", (None,), "e, the query's first entity", probe=False),
            Intermediate("relation_1", (None,), "r1", probe=False),
            Intermediate("relation_2", (None,), "r2 (-1 for an atomic fact)", probe=False),
            Intermediate("bridge_entity", (None,), "b = r1(e)", claims=(3, 4, 5),
                         kinds=("change", "preserve")),
            Intermediate("answer_entity", (None,), "the true answer r2(b)"),
            Intermediate("n_hops", (None,), "1 for an atomic fact, 2 for a two-hop query", probe=False),
        ]

    def prompt_positions(self) -> list[int]:
        return [1, 2, 3]

    def answer_slots_revealing(self, name, column):
        self.check_entry(name, column)
        return [0]  # the one answer token

    def analysis_mask(self, examples: Examples) -> torch.Tensor:
        return examples.intermediates["n_hops"] == 2

    def checked_intermediates(self) -> tuple[str, ...]:
        return thr_analysis.CHECKED

    def counterfactuals(self, examples, name, column, kind, rng):
        from memlens.tasks import dataset_for

        return thr_analysis.counterfactuals(self, examples, name, column, kind, rng,
                                            dataset_for(examples).train)

    def neighbours(self, dataset, noisy, seed, max_per_example=4):
        return thr_analysis.neighbours(self, dataset, noisy, seed, max_per_example)

    def neuron_features(self, examples):
        return thr_analysis.neuron_features(examples)

    def input_slots(self):
        c = self.config
        entities = [self.entity_token_id(i) for i in range(c.n_entities)]
        relations = [self.relation_token_id(i) for i in range(c.n_relations)]
        singles = {"head": ([1], entities), "relation_1": ([2], relations), "relation_2": ([3], relations)}
        return singles, {"relations": ["relation_1", "relation_2"]}

    def lens_targets(self, examples: Examples) -> dict[str, torch.Tensor]:
        return {"bridge": self.entity_token_id(examples.intermediates["bridge_entity"])}

    def reference_overrides(self) -> dict:
        return {"noise_rate": 1.0, "noise_atomic": True}

    def describe_positions(self):
        return {"bos": 0, "head": 1, "relation_1": 2, "relation_2": 3, "answer_token": 4,
                "answer_pos (predicting)": self.answer_pos}

    def entity_token_id(self, entity: int | torch.Tensor | np.ndarray):
        """Token id(s) of entity index(es)."""
        return entity + self._entity0

    def relation_token_id(self, relation: int | torch.Tensor | np.ndarray):
        return relation + self._relation0

    def generate(self, seed: int) -> Dataset:
        c = self.config
        graph_rng, split_rng, noise_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
        )
        E, R, K = c.n_entities, c.n_relations, c.relations_per_entity
        # each entity gets K distinct relations, each with a uniformly drawn tail
        relations = np.argsort(graph_rng.random((E, R)), axis=1)[:, :K]
        tails = graph_rng.integers(0, E, size=(E, K))

        head = np.repeat(np.arange(E), K * K)
        r1_slot = np.tile(np.repeat(np.arange(K), K), E)
        r2_slot = np.tile(np.arange(K), E * K)
        bridge = tails[head, r1_slot]
        two_hop = {
            "head_entity": head,
            "relation_1": relations[head, r1_slot],
            "relation_2": relations[bridge, r2_slot],
            "bridge_entity": bridge,
            "answer_entity": tails[bridge, r2_slot],
        }
        order = split_rng.permutation(c.n_two_hop)
        train_idx = order[: c.n_inferred_train]
        test_idx = order[c.n_inferred_train: c.n_inferred_train + c.n_test]

        atomic_head = np.repeat(np.arange(E), K)
        atomic = {
            "head_entity": atomic_head,
            "relation_1": relations.reshape(-1),
            "relation_2": np.full(E * K, -1),
            "bridge_entity": tails.reshape(-1),
            "answer_entity": tails.reshape(-1),
        }
        train = {k: np.concatenate([atomic[k], two_hop[k][train_idx]]) for k in atomic}
        test = {k: two_hop[k][test_idx] for k in two_hop}

        is_noisy = np.zeros(len(train["head_entity"]), dtype=bool)
        is_noisy[c.n_atomic:] = choose_noisy(c.n_inferred_train, c.noise_rate, noise_rng)
        if c.noise_atomic:  # drawn after the two-hop noise, so that stream is unchanged
            is_noisy[: c.n_atomic] = choose_noisy(c.n_atomic, c.noise_rate, noise_rng)
        label_entity = train["answer_entity"].copy()
        label_entity[is_noisy] = draw_other(
            train["answer_entity"][is_noisy], E, noise_rng, also_avoid=train["bridge_entity"][is_noisy]
        )
        stats = {
            "n_atomic": c.n_atomic, "n_inferred_train": c.n_inferred_train, "n_test": c.n_test,
            "n_two_hop_total": c.n_two_hop, "n_noisy": int(is_noisy.sum()),
            "seq_len": self.seq_len, "vocab_size": len(self.tokenizer),
        }
        return Dataset(
            train=self._examples(train, label_entity, is_noisy),
            test=self._examples(test, test["answer_entity"], np.zeros(c.n_test, dtype=bool)),
            task_name=self.name, seed=seed, stats=stats, task_config=asdict(c),
        )

    def _examples(self, parts: dict[str, np.ndarray], label_entity: np.ndarray,
                  is_noisy: np.ndarray) -> Examples:
        n = len(label_entity)
        none_id = self.tokenizer.token_to_id(NO_RELATION)
        second = np.where(parts["relation_2"] >= 0, parts["relation_2"] + self._relation0, none_id)
        tokens = np.stack([
            np.full(n, self.tokenizer.bos_id),
            parts["head_entity"] + self._entity0,
            parts["relation_1"] + self._relation0,
            second,
            label_entity + self._entity0,
        ], axis=1)
        intermediates = dict(parts)
        intermediates["n_hops"] = np.where(parts["relation_2"] >= 0, 2, 1)
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
        return Examples(
            tokens=as_tensor(tokens),
            answer_pos=torch.tensor(self.answer_pos, dtype=torch.long),
            labels=as_tensor(label_entity[:, None] + self._entity0),
            true_labels=as_tensor(parts["answer_entity"][:, None] + self._entity0),
            is_noisy=torch.from_numpy(is_noisy.copy()),
            intermediates={k: as_tensor(v) for k, v in intermediates.items()},
            task_name=self.name,
        )

    def record_intermediate(self, name: str, value: Tensor) -> Any:
        """Entities and relations as their token strings (a missing relation, -1, as None)."""
        v = int(value)
        if name.endswith("_entity"):
            return self.tokenizer.id_to_token(self.entity_token_id(v))
        if name.startswith("relation_"):
            return self.tokenizer.id_to_token(self.relation_token_id(v)) if v >= 0 else None
        return v
