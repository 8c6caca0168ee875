"""``patch_intermediate``: where do the activations that carry an intermediate result live, and
does the memorized noisy label depend on them? (Claim 4 of PAPER.md.)

For each example a counterfactual input changes (or, ``kind="preserve"``, keeps) one
intermediate (see ``counterfactuals``). The counterfactual's prompt, with the original's answer
tokens teacher-forced so that only the edited prompt tokens differ, is run, and its activations
are patched into the original run at every (layer, position); on clean examples we ask whether
the answer moves to the counterfactual's answer, on noisy examples whether recall of the
memorized noisy label drops. :mod:`memlens.analysis.dependence` compares both kinds at one site
(claims 4 and 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from memlens.backend import Model
from memlens.analysis.common import AnalysisError, Result, check_examples
from memlens.analysis.counterfactuals import make_counterfactuals
from memlens.analysis.patching import HOOKS, patch_grid
from memlens.tasks.base import Examples
from memlens.training.metrics import with_answer


@dataclass
class PatchIntermediateResult(Result):
    """Per (layer, position) and group: the share of examples whose answer moved to the
    counterfactual's answer in the slots the intermediate decides (``moved_rate``), and the recall
    of the trained label after patching (with its drop from the unpatched baseline)."""

    variable: str
    column: int | None
    hook: str
    frame: pd.DataFrame
    baseline: dict = field(default_factory=dict)
    n_skipped: int = 0
    input_positions: list[int] = field(default_factory=list)
    name = "patching"

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def summary(self) -> dict:
        f = self.frame
        out = {"variable": self.variable, "column": self.column, "hook": self.hook,
               "baseline": self.baseline, "n_skipped": self.n_skipped}
        for group, col in (("clean", "moved_rate"), ("noisy", "recall_drop")):
            part = f[f["group"] == group]
            if len(part):
                top = part.loc[part[col].idxmax()]
                out[f"{group}_max_{col}"] = float(top[col])
                out[f"{group}_argmax"] = {"layer": int(top["layer"]), "position": int(top["position"])}
        # The site that carries the intermediate inside the model: the best clean site, leaving
        # out layer-0 patches of the input tokens that differ (those just swap the input).
        internal = f[~((f["layer"] == 0) & f["position"].isin(self.input_positions))]
        clean = internal[internal["group"] == "clean"]
        if len(clean):
            site = clean.loc[clean["moved_rate"].idxmax()]
            at = internal[(internal["layer"] == site["layer"]) & (internal["position"] == site["position"])]
            out["internal_site"] = {"layer": int(site["layer"]), "position": int(site["position"])}
            out["internal_site_clean_moved_rate"] = float(site["moved_rate"])
            noisy = at[at["group"] == "noisy"]
            if len(noisy):
                out["internal_site_noisy_recall_drop"] = float(noisy["recall_drop"].iloc[0])
        return out

    @staticmethod
    def render(data: dict):
        """Heatmaps over layer x position: clean moved-rate and noisy recall drop."""
        from plotly.subplots import make_subplots
        import plotly.graph_objects as go

        frame, summary = pd.DataFrame(data["frame"]), data["summary"]
        groups = [(g, c) for g, c in (("clean", "moved_rate"), ("noisy", "recall_drop"))
                  if (frame["group"] == g).any()]
        fig = make_subplots(rows=1, cols=len(groups), subplot_titles=[
            f"{g}: {c.replace('_', ' ')}" for g, c in groups])
        for i, (group, col) in enumerate(groups, 1):
            part = frame[frame["group"] == group]
            grid = part.pivot(index="layer", columns="position", values=col)
            fig.add_trace(go.Heatmap(z=grid.values, x=list(grid.columns), y=list(grid.index),
                                     zmin=0, zmax=1, colorscale="Viridis", showscale=i == len(groups)),
                          row=1, col=i)
            fig.update_xaxes(title_text="position", row=1, col=i)
            fig.update_yaxes(title_text="layer", row=1, col=i)
        label = summary["variable"] + (f"[{summary['column']}]" if summary["column"] is not None else "")
        fig.update_layout(title=f"Patching the counterfactual {label} ({summary['hook']})")
        return fig


def patch_intermediate(model: Model, examples: Examples, variable: str, *, column: int | None = None,
                       layers: list[int] | None = None, positions: list[int] | None = None,
                       hook: str = "resid_pre", kind: str = "change", seed: int = 0,
                       on_invalid: str = "skip", chunk_size: int = 4096) -> PatchIntermediateResult:
    """Patch counterfactual activations of ``variable`` into the original run, layers x positions.

    ``examples`` may mix clean and noisy examples (groups come from ``is_noisy``). ``column``
    picks the FDA column (``column_sum``: 0..n_digits-1, ``carry``: 1..n_digits). Examples that
    have no counterfactual are skipped (``on_invalid="skip"``) or refused (``"raise"``).

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> res = patch_intermediate(model, task.generate(0).train[:64], "column_sum", column=0)
    >>> sorted(res.to_frame().columns)[:4]
    ['group', 'layer', 'moved_rate', 'n']
    """
    check_examples(model, examples)
    if hook not in HOOKS or HOOKS[hook][1] is not None:
        valid = [k for k, (_, axis) in HOOKS.items() if axis is None]
        raise AnalysisError(f"hook={hook!r} is invalid for patch_intermediate: expected one of {valid}")
    if on_invalid not in ("skip", "raise"):
        raise AnalysisError(f"on_invalid={on_invalid!r} is invalid: expected 'skip' or 'raise'")
    pairs = make_counterfactuals(examples, variable, column, kind=kind, seed=seed)
    n_skipped = int((~pairs.valid).sum())
    if n_skipped and on_invalid == "raise":
        bad = (~pairs.valid).nonzero().flatten()[:10].tolist()
        raise AnalysisError(f"{n_skipped} examples have no counterfactual for {variable} "
                            f"(first indices {bad}); pass on_invalid='skip' to leave them out")
    if len(pairs.original) == 0:
        raise AnalysisError(f"no example has a counterfactual for {variable!r}")
    original, counter = pairs.original, pairs.counterfactual
    source = with_answer(counter, original.labels)  # only the edited prompt tokens differ
    answer_pos = original.answer_pos.to(next(model.parameters()).device)

    def predictions(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, answer_pos].argmax(-1)

    with torch.no_grad():
        base = predictions(model(original.tokens.to(answer_pos.device))).cpu()
    preds = patch_grid(model, source, original.tokens, lambda logits: logits.argmax(-1), hook=hook,
                       layers=layers, positions=positions, chunk_size=chunk_size,
                       logit_positions=answer_pos.tolist())  # (L, P, n, A)
    layers_used = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    positions_used = list(range(original.tokens.shape[1])) if positions is None else list(positions)

    # "moved": the answer slots that the intermediate decides now show the counterfactual's
    # answer (for a carry into column c: digit c; the column below changes too, but by its own
    # column sum). Pairs whose slots do not differ cannot move and count as not moved.
    slots = torch.tensor(pairs.answer_slots, dtype=torch.long)
    differs = (counter.true_labels[:, slots] != original.true_labels[:, slots]).all(-1)
    moved = (preds[..., slots] == counter.true_labels[:, slots]).all(-1) & differs
    recall = (preds == original.labels).all(-1)  # (L, P, n)
    base_recall = (base == original.labels).all(-1)
    groups = {"clean": ~original.is_noisy, "noisy": original.is_noisy}
    rows, baseline = [], {}
    for group, mask in groups.items():
        if not mask.any():
            continue
        baseline[group] = {"n": int(mask.sum()), "recall": float(base_recall[mask].float().mean())}
        for li, layer in enumerate(layers_used):
            for pi, pos in enumerate(positions_used):
                r = float(recall[li, pi][mask].float().mean())
                rows.append({
                    "layer": layer, "position": pos, "group": group, "n": int(mask.sum()),
                    "recall": r, "recall_drop": baseline[group]["recall"] - r,
                    "moved_rate": float(moved[li, pi][mask].float().mean()),
                })
    return PatchIntermediateResult(variable=variable, column=column, hook=hook,
                                   frame=pd.DataFrame(rows), baseline=baseline, n_skipped=n_skipped,
                                   input_positions=pairs.edited_positions)
