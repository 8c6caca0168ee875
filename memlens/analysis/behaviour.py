"""The trained model's behaviour, example by example: what claim 2 rests on.

* noisy training examples answered with their noisy label (recall) and, with the true label
  teacher-forced, with their true label;
* held-out test examples answered correctly, beside a paired noise-free baseline model when one
  is given (same inputs and test set, noise rate 0);
* **neighbours** of noisy examples (``TaskBase.neighbours``: held-out inputs close to a noisy
  one) answered with that noisy example's noisy label (a *leak*: memorization spreading to
  similar inputs), and with their own true label.

Every number is kept per example so that the scorecard can resample examples (neighbours in
clusters of one noisy example and its neighbours).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from memlens import backend
from memlens.backend import Model
from memlens.analysis.common import AnalysisError, Result, check_examples, model_device
from memlens.tasks.base import Examples
from memlens.tasks.protocol import Neighbours
from memlens.training.metrics import with_answer


@torch.no_grad()
def answered(model: Model, examples: Examples, answer: Tensor | None = None, batch: int = 4096) -> Tensor:
    """Per example: 1 when the model's teacher-forced argmax equals ``answer`` (default: the
    examples' labels) at every answer slot, with ``answer`` teacher-forced."""
    answer = examples.labels if answer is None else answer
    tokens = with_answer(examples, answer)
    device = model_device(model)
    pos = examples.answer_pos.to(device)
    out = []
    for i in range(0, len(tokens), batch):
        preds = backend.logits_at(model, tokens[i:i + batch].to(device), pos).argmax(-1).cpu()
        out.append((preds == answer[i:i + batch]).all(-1))
    return torch.cat(out).int() if out else torch.zeros(0, dtype=torch.int)


@dataclass
class BehaviourResult(Result):
    """Per-example outcomes (0/1) by group; ``baseline`` holds the noise-free model's."""

    outcomes: dict[str, Tensor]
    neighbour_source: Tensor
    neighbour_relation: list[str]
    baseline: dict[str, Tensor] = field(default_factory=dict)
    name = "behaviour"

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for model_name, outcomes in (("model", self.outcomes), ("baseline", self.baseline)):
            for key, values in outcomes.items():
                rows.append({"model": model_name, "outcome": key, "n": len(values),
                             "mean": float(values.float().mean()) if len(values) else float("nan")})
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        means = {k: float(v.float().mean()) if len(v) else None for k, v in self.outcomes.items()}
        out = {"means": means, "n": {k: len(v) for k, v in self.outcomes.items()},
               "examples": {k: v.tolist() for k, v in self.outcomes.items()},
               "neighbour_source": self.neighbour_source.tolist(),
               "neighbour_relation": self.neighbour_relation}
        if self.baseline:
            out["baseline"] = {"means": {k: float(v.float().mean()) if len(v) else None
                                         for k, v in self.baseline.items()},
                               "examples": {k: v.tolist() for k, v in self.baseline.items()}}
        return out

    @staticmethod
    def render(data: dict):
        import plotly.express as px

        return px.bar(pd.DataFrame(data["frame"]), x="outcome", y="mean", color="model",
                      barmode="group", range_y=[0, 1],
                      title="Behaviour: recall, test accuracy, neighbours (leaks), with the noise-free "
                            "baseline")


def behaviour(model: Model, noisy: Examples, test: Examples, neighbours: Neighbours | None = None, *,
              baseline=None) -> BehaviourResult:
    """Per-example recall of noisy labels, test accuracy and neighbour leaks (module docstring).

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> data = task.generate(0)
    >>> s = data.splits
    >>> res = behaviour(model, s["train_noisy"], s["test"], task.neighbours(data, s["train_noisy"], 0))
    >>> sorted(res.outcomes)
    ['neighbour_accuracy', 'neighbour_leak', 'noisy_recall', 'noisy_true', 'test_correct']
    """
    check_examples(model, test, "test examples")
    if len(noisy):
        check_examples(model, noisy, "noisy examples")
    if baseline is not None:
        check_examples(baseline, test, "test examples (baseline)")

    def outcomes(net) -> dict[str, Tensor]:
        out = {"test_correct": answered(net, test)}
        if len(noisy):
            out["noisy_recall"] = answered(net, noisy)
            out["noisy_true"] = answered(net, noisy, noisy.true_labels)
        if neighbours is not None and len(neighbours.examples):
            out["neighbour_leak"] = answered(net, neighbours.examples, neighbours.noisy_label)
            out["neighbour_accuracy"] = answered(net, neighbours.examples)
        return out

    if neighbours is not None and len(neighbours.examples) and len(neighbours.source) != len(neighbours.examples):
        raise AnalysisError("neighbours.source must have one entry per neighbour")
    result = outcomes(model)
    base = {}
    if baseline is not None:
        # The baseline's neighbour accuracy is the control for the noisy run's: neighbours can be
        # damaged (answered wrongly) without taking the noisy label.
        base = {k: v for k, v in outcomes(baseline).items()
                if k in ("test_correct", "neighbour_leak", "neighbour_accuracy")}
    source = neighbours.source if neighbours is not None else torch.zeros(0, dtype=torch.long)
    relation = neighbours.relation if neighbours is not None else []
    return BehaviourResult(result, source, relation, base)
