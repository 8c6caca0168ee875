"""Does recall of a memorized label depend on an intermediate result? (Claims 4 and 5.)

For each example, a *changing* and a *preserving* counterfactual edit the same input tokens
(:func:`~memlens.analysis.counterfactuals.matched_counterfactuals`). The source run of a patch is
the counterfactual's prompt with the *original's* answer tokens teacher-forced, so that source and
target differ only in the edited prompt tokens. Its residual stream (``resid_pre``) is patched into
the original run at one (layer, position) at a time, for every layer and every position from the
first edited token on.

* The **site** is where, on clean examples (a selection group), the changing patch costs the most
  accuracy beyond the preserving patch, leaving out layer-0 patches of the edited tokens (those
  only swap the input). A model without clean examples (the pure-memorizer reference) selects on
  half of its noisy examples and is evaluated on the other half.
* At the site, on noisy examples the model recalls: recall after each patch (claim 4a = recall
  after preserving minus after changing); and the input-level version, where the counterfactual
  input itself is run with the original's label teacher-forced (claim 5b = recall lost under the
  preserving input).

Per-example outcomes are kept so that the scorecard can resample examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from memlens.backend import Model
from memlens import backend
from memlens.analysis.common import AnalysisError, Result, check_examples, model_device
from memlens.analysis.counterfactuals import matched_counterfactuals
from memlens.analysis.patching import patch_grid
from memlens.tasks.base import Examples
from memlens.training.metrics import with_answer

KINDS = ("change", "preserve")


@torch.no_grad()
def _predict(model, tokens: Tensor, answer_pos: Tensor, batch: int = 4096) -> Tensor:
    device = model_device(model)
    out = [backend.logits_at(model, tokens[i:i + batch].to(device), answer_pos.to(device)).argmax(-1).cpu()
           for i in range(0, len(tokens), batch)]
    return torch.cat(out) if out else torch.zeros(0, len(answer_pos), dtype=torch.long)


@dataclass
class GroupOutcome:
    """One group's per-example outcomes (1 = the original's trained label is produced)."""

    n: int
    base: Tensor                        # (n,) unpatched
    grid: dict[str, Tensor]             # kind -> (len(layers), len(positions), n)
    inputs: dict[str, Tensor]           # kind -> (n,) counterfactual input, original label forced
    layers: list[int]                   # the grid's own coordinates: the whole sweep, or the site
    positions: list[int]

    def subset(self, keep: Tensor) -> "GroupOutcome":
        return GroupOutcome(int(keep.sum()), self.base[keep], {k: v[..., keep] for k, v in self.grid.items()},
                            {k: v[keep] for k, v in self.inputs.items()}, self.layers, self.positions)

    def at(self, kind: str, layer: int, position: int) -> Tensor:
        """(n,) outcomes of the ``kind`` patch at (``layer``, ``position``)."""
        return self.grid[kind][self.layers.index(layer), self.positions.index(position)]


def _outcomes(model, pairs, layers: list[int], positions: list[int], chunk_size: int,
              method: str) -> GroupOutcome:
    original = pairs.original
    answer_pos = original.answer_pos
    labels = original.labels
    hit = lambda preds: (preds == labels.to(preds.device)).all(-1)  # noqa: E731
    device = model_device(model)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    # One run per input: each source's run gives both its own answer (the input-level outcome)
    # and the activations patched from it; the target (original) run is shared by both kinds
    # and gives the unpatched outcome.
    target_cache: dict = {}
    grid, inputs = {}, {}
    for kind in KINDS:
        source = with_answer(getattr(pairs, kind), labels)  # differs from original in the edit only
        logits, source_cache = None, None
        if method == "suffix" and len(source):
            logits, source_cache = backend.recorded_run(model, source.to(device), names,
                                                        logit_positions=answer_pos.tolist())
        preds_in = _predict(model, source, answer_pos) if logits is None else logits.argmax(-1)
        inputs[kind] = hit(preds_in.cpu()).cpu()
        preds = patch_grid(model, source, original.tokens, lambda logits: logits.argmax(-1),
                           hook="resid_pre", layers=layers, positions=positions, chunk_size=chunk_size,
                           method=method, logit_positions=answer_pos.tolist(), source_cache=source_cache,
                           target_cache=target_cache)  # (L, P, n, A)
        grid[kind] = hit(preds.cpu())
    if "logits" in target_cache:  # at the answer positions where the model resumes runs, else at every one
        at = target_cache["logits"] if backend.can_resume(model) else target_cache["logits"][:, answer_pos]
        base = hit(at.argmax(-1).cpu())
    else:
        base = hit(_predict(model, original.tokens, answer_pos))
    return GroupOutcome(len(original), base.cpu(), grid, inputs, layers, positions)


@dataclass
class DependenceResult(Result):
    """Site, grids and per-example outcomes of changing vs preserving patches for one
    intermediate. ``frame``: one row per (group, kind, layer, position) with the mean outcome.
    The held-out clean group is patched at the site alone (nothing reads it elsewhere)."""

    variable: str
    column: int | None
    layers: list[int]
    positions: list[int]
    edited_positions: list[int]
    site: dict
    groups: dict[str, GroupOutcome]
    evaluated: dict[str, Tensor] = field(default_factory=dict)  # group -> mask of evaluated examples
    name = "dependence"

    @property
    def label(self) -> str:
        return self.variable if self.column is None else f"{self.variable}[{self.column}]"

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for group, out in self.groups.items():
            for kind, grid in out.grid.items():
                means = grid.float().mean(-1) if out.n else torch.full(grid.shape[:2], float("nan"))
                for li, layer in enumerate(out.layers):
                    for pi, pos in enumerate(out.positions):
                        rows.append({"intermediate": self.label, "group": group, "kind": kind,
                                     "layer": layer, "position": pos,
                                     "correct": float(means[li, pi])})
        return pd.DataFrame(rows)

    def at_site(self, group: str) -> dict[str, list[int]]:
        """Per-example outcomes at the site for the group's evaluated examples: those the model
        answers with their trained label unpatched (0/1 lists)."""
        out = self.groups[group]
        keep = self.evaluated.get(group, torch.ones(out.n, dtype=torch.bool))
        layer, position = self.site["layer"], self.site["position"]
        return {
            "base": out.base[keep].int().tolist(),
            "patch_change": out.at("change", layer, position)[keep].int().tolist(),
            "patch_preserve": out.at("preserve", layer, position)[keep].int().tolist(),
            "input_change": out.inputs["change"][keep].int().tolist(),
            "input_preserve": out.inputs["preserve"][keep].int().tolist(),
        }

    def summary(self) -> dict:
        out = {"variable": self.variable, "column": self.column, "label": self.label,
               "site": self.site, "edited_positions": self.edited_positions}
        for group in self.groups:
            data = self.at_site(group)
            mean = {k: float(np.mean(v)) if v else None for k, v in data.items()}
            specific = (mean["patch_preserve"] - mean["patch_change"]) if data["base"] else None
            out[group] = {"n": len(data["base"]), "mean": mean, "specific_loss": specific,
                          "examples": data}
        return out

    @staticmethod
    def render(data: dict):
        return render_dependence(data)


def render_dependence(data: dict):
    """Per intermediate and group: over layer x position, the outcome after the preserving patch
    minus after the changing patch (the intermediate-specific effect), with the site marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    frame = pd.DataFrame(data["frame"])
    items = list(dict.fromkeys(frame["intermediate"]))
    groups = [g for g in ("clean_select", "noisy") if g in set(frame["group"])]
    fig = make_subplots(rows=len(items), cols=len(groups), vertical_spacing=0.04,
                        subplot_titles=[f"{i}: {g}" for i in items for g in groups])
    summary = data["summary"]
    sites = {v["label"]: v["site"] for v in summary.values()} if "label" not in summary else {
        summary["label"]: summary["site"]}
    for r, item in enumerate(items, 1):
        for c, group in enumerate(groups, 1):
            part = frame[(frame["intermediate"] == item) & (frame["group"] == group)]
            grid = part.pivot_table(index=["layer", "position"], columns="kind", values="correct")
            diff = (grid["preserve"] - grid["change"]).unstack("position")
            fig.add_trace(go.Heatmap(z=diff.values, x=list(diff.columns), y=list(diff.index), zmin=-1,
                                     zmax=1, colorscale="RdBu", showscale=(r, c) == (1, len(groups))),
                          row=r, col=c)
            site = sites.get(item)
            if site:
                fig.add_scatter(x=[site["position"]], y=[site["layer"]], mode="markers", showlegend=False,
                                marker={"symbol": "x", "size": 10, "color": "black"}, row=r, col=c)
    fig.update_layout(title="Preserving minus changing patch (x: the site, chosen on clean examples)",
                      height=170 * len(items) + 120)
    return fig


def _specific(out: GroupOutcome, keep: Tensor | None = None) -> Tensor:
    """(layers, positions) mean of preserve-minus-change outcomes over ``keep``."""
    diff = out.grid["preserve"].float() - out.grid["change"].float()
    if keep is not None:
        diff = diff[..., keep]
    return diff.mean(-1) if diff.shape[-1] else torch.zeros(diff.shape[:2])


def _choose_site(score: Tensor, layers: list[int], positions: list[int], edited: list[int]) -> dict:
    """Argmax of ``score`` over the grid, leaving out layer-0 patches of edited input tokens."""
    score = score.clone()
    for li, layer in enumerate(layers):
        for pi, pos in enumerate(positions):
            if layer == 0 and pos in edited:
                score[li, pi] = -float("inf")
    flat = int(score.flatten().argmax())
    li, pi = divmod(flat, len(positions))
    return {"layer": layers[li], "position": positions[pi], "score": float(score[li, pi])}


def intermediate_dependence(model: Model, noisy: Examples, variable: str, column: int | None = None, *,
                            clean_select: Examples | None = None,
                            clean_heldout: Examples | None = None, seed: int = 0,
                            site: dict | None = None, method: str = "suffix",
                            chunk_size: int = 4096) -> DependenceResult:
    """Changing vs preserving patches of ``variable[column]`` over layers x positions; the site
    chosen on ``clean_select`` (or, without clean examples, on half of the noisy ones) and the
    per-example outcomes there for noisy examples the model recalls and for ``clean_heldout``.

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> s = task.generate(0).splits
    >>> res = intermediate_dependence(model, s["train_noisy"], "column_sum", 0,
    ...                               clean_select=s["train_clean"][:40])
    >>> sorted(res.site)
    ['chosen_on', 'layer', 'position', 'score']
    """
    groups_in = {"noisy": noisy, "clean_select": clean_select, "clean_heldout": clean_heldout}
    groups_in = {k: v for k, v in groups_in.items() if v is not None}
    for name, ex in groups_in.items():
        check_examples(model, ex, f"group {name!r}")
    pairs = {name: matched_counterfactuals(ex, variable, column, seed=seed)
             for name, ex in groups_in.items()}
    edited = pairs["noisy"].edited_positions
    positions = list(range(min(edited), noisy.tokens.shape[1]))
    layers = list(range(model.cfg.n_layers))
    # Every group but the held-out one is swept over the whole grid (the site is chosen on one,
    # and the figure shows them); the held-out group is read at the site only.
    groups = {name: _outcomes(model, p, layers, positions, chunk_size, method)
              for name, p in pairs.items() if name != "clean_heldout"}
    recalled = groups["noisy"].base
    evaluated = {name: out.base.clone() for name, out in groups.items()}  # answered as trained
    if site is not None:
        if site.get("layer") not in layers or site.get("position") not in positions:
            raise AnalysisError(f"site={site!r} is not on the grid: layers {layers}, positions "
                                f"{positions}")
        site = {"layer": int(site["layer"]), "position": int(site["position"]), "score": None,
                "chosen_on": "given"}
    elif "clean_select" in groups:
        site = _choose_site(_specific(groups["clean_select"], evaluated["clean_select"]), layers,
                            positions, edited)
        site["chosen_on"] = "clean_select"
    else:  # no clean examples: choose on one half of the recalled noisy examples
        gen = torch.Generator().manual_seed(seed)
        half = torch.zeros(len(recalled), dtype=torch.bool)
        idx = recalled.nonzero().flatten()
        half[idx[torch.randperm(len(idx), generator=gen)[: len(idx) // 2]]] = True
        site = _choose_site(_specific(groups["noisy"], half), layers, positions, edited)
        site["chosen_on"] = "noisy half"
        evaluated["noisy"] = recalled & ~half
    if "clean_heldout" in pairs:
        held = _outcomes(model, pairs["clean_heldout"], [site["layer"]], [site["position"]],
                         chunk_size, method)
        groups["clean_heldout"], evaluated["clean_heldout"] = held, held.base.clone()
    # A model that recalls no noisy label (not trained long enough) leaves nothing to evaluate:
    # the summary says so with n = 0, and the scorecard calls it not measured.
    return DependenceResult(variable, column, layers, positions, edited, site, groups, evaluated)
