"""Task-aware logit lens: what each residual-stream point already says about the answer.

At every residual point (before and after attention and MLP of each layer) and every
answer-predicting position, the residual is decoded with the model's own final LayerNorm and
unembedding; we record the probability and rank of the true label, of the noisy label (noisy
examples only) and of the task's extra targets (``TaskBase.lens_targets``: the THR bridge
entity). At the last point this is exactly the model's output. Claim 3 (Du et al. 2025): on
memorized examples the true answer is readable in intermediate layers and the noisy label takes
over late; :func:`takeover_point` finds where, at the first answer slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from memlens.backend import Model
from memlens.analysis.common import (
    Result, check_groups, chunks, model_device, resid_point_names,
)
from memlens.tasks.base import Examples


def decode_resid(model: Model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """Logits the model would output if ``resid`` were its final residual stream."""
    return model.unembed(model.ln_final(resid))


def _targets(model, examples: Examples) -> dict[str, Tensor]:
    """Token ids to track, each (n, answer_len); -1 where a target does not apply."""
    out = {"true": examples.true_labels, "noisy": torch.where(
        examples.is_noisy[:, None], examples.labels, torch.full_like(examples.labels, -1))}
    if examples.origin:
        from memlens.tasks import task_for

        for name, ids in task_for(examples).lens_targets(examples).items():
            out[name] = torch.as_tensor(ids)[:, None].expand_as(examples.labels)
    return out


def takeover_point(true_rank: Tensor, label_rank: Tensor) -> int | None:
    """Index of the first point of the final run of points at which the noisy label is top-1
    more often than the true label, from per-example ranks ``(n, points)`` of noisy examples;
    None when the noisy label does not lead at the last point.

    >>> true = torch.tensor([[0, 0, 1, 3], [0, 1, 0, 2]])
    >>> noisy = torch.tensor([[2, 1, 0, 0], [1, 0, 1, 0]])
    >>> takeover_point(true, noisy)
    3
    """
    ahead = ((label_rank == 0).float().mean(0) > (true_rank == 0).float().mean(0)).tolist()
    start = None
    for p in reversed(range(len(ahead))):
        if not ahead[p]:
            break
        start = p
    return start


@dataclass
class LogitLensResult(Result):
    """Per-example probabilities and ranks, by group: ``prob[group]`` is
    ``(n, n_points, answer_len, n_targets)`` with NaN where a target does not apply."""

    points: list[str]
    targets: list[str]
    prob: dict[str, Tensor]
    rank: dict[str, Tensor]
    answer_columns: list[int] = field(default_factory=list)
    name = "logit_lens"

    def to_frame(self) -> pd.DataFrame:
        """Long format: group, point, answer_index, target, mean/quartiles of prob, rank, top-1."""
        rows = []
        for group, prob in self.prob.items():
            rank = self.rank[group]
            for p, point in enumerate(self.points):
                for a in range(prob.shape[2]):
                    for t, target in enumerate(self.targets):
                        values = prob[:, p, a, t]
                        ok = ~torch.isnan(values)
                        if not ok.any():
                            continue
                        v, r = values[ok].numpy(), rank[:, p, a, t][ok].numpy()
                        rows.append({
                            "group": group, "point": point, "point_index": p, "answer_index": a,
                            "column": self.answer_columns[a] if self.answer_columns else a,
                            "target": target, "n": int(ok.sum()), "mean_prob": float(v.mean()),
                            "q25_prob": float(np.quantile(v, 0.25)), "q75_prob": float(np.quantile(v, 0.75)),
                            "mean_rank": float(r.mean()), "top1": float((r == 0).mean()),
                        })
        return pd.DataFrame(rows)

    def first_slot_ranks(self) -> dict[str, dict[str, Tensor]]:
        """Per group, per-example ranks ``(n, points)`` at the first answer slot of the true
        label (every group) and of the noisy label (noisy examples)."""
        ti, ni = self.targets.index("true"), self.targets.index("noisy")
        out = {}
        for group, rank in self.rank.items():
            out[group] = {"true": rank[:, :, 0, ti]}
            if group == "train_noisy":
                out[group]["noisy"] = rank[:, :, 0, ni]
        return out

    def summary(self) -> dict:
        """On noisy examples (all answer slots pooled): where the true label's probability peaks,
        and the point from which on the noisy label is top-1 more often than the true label at
        every later point (None if it never stays ahead). Per-point lists keep layer order.
        ``first_slot``: the takeover point at the first answer slot (no answer token visible),
        and every group's per-example ranks there (claim 3c)."""
        if "train_noisy" not in self.prob or len(self.prob["train_noisy"]) == 0:
            return {}
        prob, rank = self.prob["train_noisy"], self.rank["train_noisy"]
        ti, ni = self.targets.index("true"), self.targets.index("noisy")
        true_mean = prob[..., ti].mean(dim=(0, 2))
        true_top1 = (rank[..., ti] == 0).float().mean(dim=(0, 2))
        noisy_top1 = (rank[..., ni] == 0).float().mean(dim=(0, 2))
        pooled = [rank[..., i].transpose(1, 2).flatten(0, 1) for i in (ti, ni)]  # (n * slots, points)
        wins_from = takeover_point(*pooled)
        peak = int(true_mean.argmax())
        first = self.first_slot_ranks()
        takeover = takeover_point(first["train_noisy"]["true"], first["train_noisy"]["noisy"])
        return {
            "first_slot": {
                "takeover_index": takeover,
                "takeover_point": None if takeover is None else self.points[takeover],
                "ranks": {g: {t: r.int().tolist() for t, r in ranks.items()} for g, ranks in first.items()},
            },
            "points": list(self.points),
            "noisy_true_prob_peak_point": self.points[peak],
            "noisy_true_prob_peak": float(true_mean[peak]),
            "noisy_true_top1_by_point": true_top1.tolist(),
            "noisy_label_top1_by_point": noisy_top1.tolist(),
            "noisy_label_wins_from_point": None if wins_from is None else self.points[wins_from],
        }

    @staticmethod
    def render(data: dict):
        """Mean probability by residual point, one curve per group and target, IQR band."""
        import plotly.graph_objects as go

        frame = pd.DataFrame(data["frame"])
        pooled = frame.groupby(["group", "target", "point_index", "point"], as_index=False)[
            ["mean_prob", "q25_prob", "q75_prob"]].mean()
        fig = go.Figure()
        for (group, target), part in pooled.groupby(["group", "target"]):
            part = part.sort_values("point_index")
            label = f"{group}: {target}"
            fig.add_scatter(x=part["point"], y=part["q75_prob"], mode="lines", line_width=0,
                            showlegend=False, legendgroup=label, hoverinfo="skip")
            fig.add_scatter(x=part["point"], y=part["q25_prob"], mode="lines", line_width=0,
                            fill="tonexty", opacity=0.2, showlegend=False, legendgroup=label,
                            hoverinfo="skip")
            fig.add_scatter(x=part["point"], y=part["mean_prob"], mode="lines+markers", name=label,
                            legendgroup=label)
        takeover = (data["summary"].get("first_slot") or {}).get("takeover_point")
        fig.update_layout(title="Logit lens: probability of each target by residual point"
                          + (f" (noisy label takes over at {takeover}, first slot)" if takeover else ""),
                          xaxis_title="residual stream point", yaxis_title="probability",
                          yaxis_range=[0, 1], height=400)
        return fig


@torch.no_grad()
def logit_lens(model: Model, groups: dict[str, Examples] | Examples, *, with_mid: bool = True,
               chunk_size: int = 1024, answer_columns: list[int] | None = None) -> LogitLensResult:
    """Logit lens over every residual point at the answer-predicting positions.

    ``groups`` maps a group name (``train_clean``, ``train_noisy``, ``test``) to Examples; a
    single Examples is split into ``train_clean``/``train_noisy`` by its noise flags. Examples
    are run as trained (their ``labels`` teacher-forced).

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> res = logit_lens(model, task.generate(seed=0).splits)
    >>> res.points
    ['L0.pre', 'L0.mid', 'L0.post']
    >>> sorted(res.to_frame()["target"].unique())
    ['noisy', 'true']
    """
    if isinstance(groups, Examples):
        groups = {"train_clean": groups[~groups.is_noisy], "train_noisy": groups[groups.is_noisy]}
        groups = {k: v for k, v in groups.items() if len(v)}
    check_groups(model, groups)
    points = resid_point_names(model.cfg.n_layers, with_mid=with_mid)
    hook_names = [h for _, h in points]
    first = next(iter(groups.values()))
    target_names = list(_targets(model, first[:1]))
    device = model_device(model)
    prob_out, rank_out = {}, {}
    for group, examples in groups.items():
        probs, ranks = [], []
        for part in chunks(len(examples), chunk_size):
            batch = examples[part]
            targets = torch.stack(list(_targets(model, batch).values()), dim=-1).to(device)
            _, cache = model.run_with_cache(batch.tokens.to(device), return_type=None,
                                            names_filter=lambda n: n in hook_names)
            resid = torch.stack([cache[h][:, batch.answer_pos.to(device)] for h in hook_names], 1)
            del cache
            logits = decode_resid(model, resid).float()  # (b, points, answer, vocab)
            logp = logits.log_softmax(-1)
            safe = targets.clamp(min=0)[:, None].expand(-1, len(points), -1, -1)
            target_logit = logits.gather(-1, safe)
            prob = logp.gather(-1, safe).exp()
            rank = (logits[..., None, :] > target_logit[..., None]).sum(-1).float()
            missing = (targets < 0)[:, None].expand_as(prob)
            probs.append(prob.masked_fill(missing, float("nan")).cpu())
            ranks.append(rank.masked_fill(missing, float("nan")).cpu())
        prob_out[group], rank_out[group] = torch.cat(probs), torch.cat(ranks)
    return LogitLensResult(points=[p for p, _ in points], targets=target_names, prob=prob_out,
                           rank=rank_out, answer_columns=list(answer_columns or []))
