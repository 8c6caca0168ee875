"""Distributed encoding: does recall of a memorized label hinge on one input, or on many?

For every example, each prompt input is resampled in turn (a digit by another digit, an entity by
another entity, a relation by another relation), and, in groups, whole operands or query slots
are resampled together; the effect is the drop in the log-probability of the trained label
(summed over answer tokens), averaged over resamples. Shares of the per-input effects give two
concentration summaries per example: the largest share (1.0 for a lookup from one input) and the
normalized entropy of the shares (0 for a lookup, 1 when all inputs matter equally). Noisy
(memorized) examples are compared with clean ones. This is a description, not claim 5's test:
no single input token identifies an example, so any memorizer keyed on the whole input spreads
its attributions (docs/claims.md); claim 5 is scored from matched counterfactuals
(:mod:`memlens.analysis.dependence`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from memlens import backend
from memlens.backend import Model
from memlens.analysis.common import AnalysisError, Result, check_examples, model_device
from memlens.tasks import task_for
from memlens.tasks.base import Examples


def input_slots(examples: Examples) -> tuple[dict[str, tuple[list[int], list[int]]], dict[str, list[str]]]:
    """Per single input: (positions, token ids it may be resampled to), and groups of inputs,
    as the examples' task declares them (``TaskBase.input_slots``). FDA: every operand digit
    (``a0.c3`` = operand 0, column 3), grouped by operand; THR: ``head``, ``relation_1``,
    ``relation_2``, with both relations as a group."""
    return task_for(examples).input_slots()


@torch.no_grad()
def label_logprob(model: Model, tokens: Tensor, answer_pos: Tensor, labels: Tensor, batch: int = 4096) -> Tensor:
    """Summed log-probability of ``labels`` at the answer positions, per example."""
    out = []
    device = model_device(model)
    for start in range(0, len(tokens), batch):
        # The answer positions alone (the fused forward's last layer runs only those).
        logits = backend.logits_at(model, tokens[start:start + batch].to(device), answer_pos.to(device))
        logp = logits.float().log_softmax(-1)
        lab = labels[start:start + batch].to(device)
        out.append(logp.gather(-1, lab[..., None])[..., 0].sum(-1).cpu())
    return torch.cat(out)


def resample(tokens: Tensor, positions: list[int], choices: list[int], gen: torch.Generator) -> Tensor:
    """Replace the tokens at ``positions`` by other tokens drawn uniformly from ``choices``."""
    out = tokens.clone()
    pool = torch.tensor(sorted(choices))
    for pos in positions:
        # draw among the other len(pool) - 1 tokens: skip over the current one
        current = torch.searchsorted(pool, out[:, pos].contiguous())
        draw = torch.randint(0, len(pool) - 1, (len(out),), generator=gen)
        out[:, pos] = pool[draw + (draw >= current).long()]
    return out


def concentration(effects: Tensor) -> tuple[Tensor, Tensor]:
    """Largest share and normalized entropy of non-negative per-input effects ``(n, inputs)``."""
    pos = effects.clamp(min=0)
    total = pos.sum(-1, keepdim=True)
    share = torch.where(total > 0, pos / total.clamp(min=1e-12), torch.full_like(pos, 1 / pos.shape[-1]))
    entropy = -(share * share.clamp(min=1e-12).log()).sum(-1) / np.log(pos.shape[-1])
    return share.max(-1).values, entropy


@dataclass
class EncodingResult(Result):
    """Per example: effect of resampling each input (and group), shares and concentration."""

    inputs: list[str]
    groups: list[str]
    effects: Tensor  # (n, inputs)
    group_effects: Tensor  # (n, groups)
    is_noisy: Tensor
    largest_share: Tensor
    entropy: Tensor
    reference: dict = field(default_factory=dict)
    name = "encoding"

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for i in range(len(self.is_noisy)):
            group = "noisy" if self.is_noisy[i] else "clean"
            base = {"example": i, "group": group, "largest_share": float(self.largest_share[i]),
                    "entropy": float(self.entropy[i])}
            for j, name in enumerate(self.inputs):
                rows.append({**base, "input": name, "kind": "single", "effect": float(self.effects[i, j])})
            for j, name in enumerate(self.groups):
                rows.append({**base, "input": name, "kind": "group", "effect": float(self.group_effects[i, j])})
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        out = {"n_inputs": len(self.inputs), "lookup_reference": {"largest_share": 1.0, "entropy": 0.0},
               "uniform_reference": {"largest_share": 1 / len(self.inputs), "entropy": 1.0}}
        for group, mask in (("clean", ~self.is_noisy), ("noisy", self.is_noisy)):
            if mask.any():
                out[group] = {
                    "n": int(mask.sum()),
                    "mean_largest_share": float(self.largest_share[mask].mean()),
                    "mean_entropy": float(self.entropy[mask].mean()),
                    "mean_effect_by_input": dict(zip(self.inputs, self.effects[mask].mean(0).tolist())),
                    "mean_effect_by_group": dict(zip(self.groups, self.group_effects[mask].mean(0).tolist())),
                }
        return out

    @staticmethod
    def render(data: dict):
        """Mean effect of resampling each input on label recall, clean against noisy examples."""
        import plotly.graph_objects as go

        summary = data["summary"]
        fig = go.Figure()
        for group in ("clean", "noisy"):
            effects = summary.get(group, {}).get("mean_effect_by_input", {})
            fig.add_trace(go.Bar(x=list(effects), y=list(effects.values()), name=group))
        fig.update_layout(title="Which inputs the label's recall depends on", barmode="group",
                          xaxis_title="input", yaxis_title="mean drop in label log-probability",
                          height=340)
        return fig


def encoding(model: Model, examples: Examples, *, resamples: int = 4, seed: int = 0) -> EncodingResult:
    """Attribute the recall of each example's trained label to its inputs and input groups.

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("thr", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> ex = task.generate(0).train
    >>> res = encoding(model, ex[ex.intermediates["n_hops"] == 2][:50], resamples=2)
    >>> res.inputs
    ['head', 'relation_1', 'relation_2']
    """
    check_examples(model, examples)
    if resamples < 1:
        raise AnalysisError(f"resamples={resamples} is invalid: expected an integer >= 1")
    singles, groups = input_slots(examples)
    gen = torch.Generator().manual_seed(seed)
    base = label_logprob(model, examples.tokens, examples.answer_pos, examples.labels)

    def effect(positions: list[int], choices: list[int]) -> Tensor:
        drops = []
        for _ in range(resamples):
            tokens = resample(examples.tokens, positions, choices, gen)
            drops.append(base - label_logprob(model, tokens, examples.answer_pos, examples.labels))
        return torch.stack(drops).mean(0)

    names = list(singles)
    effects = torch.stack([effect(*singles[n]) for n in names], 1)
    group_effects = torch.stack([
        effect([p for m in members for p in singles[m][0]], singles[members[0]][1])
        for members in groups.values()], 1) if groups else torch.zeros(len(examples), 0)
    largest, entropy = concentration(effects)
    return EncodingResult(inputs=names, groups=list(groups), effects=effects, group_effects=group_effects,
                          is_noisy=examples.is_noisy.clone(), largest_share=largest, entropy=entropy)
