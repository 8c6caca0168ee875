"""Linear probes for intermediate results at every residual point x position, fitted together.

A probe is multinomial logistic regression on standardized activations. All probes, for every
(point, position) pair and every target, are fitted in one batched L-BFGS problem: the weights
form one tensor ``(probes, d_model, classes of all targets)`` and each target has its own softmax.
The objective per probe matches scikit-learn's ``LogisticRegression(C=1)``: summed cross-entropy
plus ``0.5 * ||W||^2``; the sum over probes is separable, so the joint optimum is each probe's own.

Controls beside each accuracy: the majority-class baseline and a probe fitted on shuffled labels.
:func:`probe_study` is claim 3's design: sites restricted to the task's eligible positions, the
site chosen on a separate clean split, a probe on the untrained model as a further control, and
per-example correctness at the chosen site for the scorecard's bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from memlens.backend import Model
from memlens.analysis.common import (
    AnalysisError, Result, analysis_subset, cached_activations, check_examples, check_positions,
    model_device,
)
from memlens.tasks.base import Examples

MAX_DIRECT_CLASSES = 100


@dataclass(frozen=True)
class ProbeTarget:
    """One probed quantity: an intermediate, optionally one of its columns, optionally one decimal
    digit of it (numbers with more than 100 values are probed digit by digit)."""

    variable: str
    column: int | None
    digit: int | None
    n_classes: int

    @property
    def label(self) -> str:
        text = self.variable + (f"[{self.column}]" if self.column is not None else "")
        return text + (f".digit[{self.digit}]" if self.digit is not None else "")

    def values(self, examples: Examples) -> Tensor:
        """This target's class labels for ``examples``."""
        values = examples.intermediates[self.variable].long()
        if self.column is not None:
            values = values[:, self.column]
        if self.digit is not None:
            values = values // 10**self.digit % 10
        return values


def probe_variables(examples: Examples) -> list[str]:
    return sorted(examples.intermediates)


def probe_targets(examples: Examples, variable: str) -> list[ProbeTarget]:
    """The targets of one intermediate: one per column; large numbers split into decimal digits.

    >>> from memlens.tasks import make_task
    >>> ex = make_task("fda", preset="tiny").generate(0).train
    >>> [t.label for t in probe_targets(ex, "carry")]
    ['carry[0]', 'carry[1]', 'carry[2]']
    """
    if variable not in examples.intermediates:
        raise AnalysisError(f"unknown intermediate {variable!r}; valid names: "
                            f"{probe_variables(examples)}")
    values = examples.intermediates[variable]
    columns = [None] if values.ndim == 1 else list(range(values.shape[1]))
    targets = []
    for column in columns:
        col = values if column is None else values[:, column]
        if int(col.min()) < 0:
            continue  # e.g. relation_2 of atomic facts: not a quantity to probe
        top = int(col.max()) + 1
        if top > MAX_DIRECT_CLASSES and not variable.endswith("_entity"):
            for d in range(len(str(top - 1))):
                targets.append(ProbeTarget(variable, column, d, 10))
        else:
            targets.append(ProbeTarget(variable, column, None, top))
    return targets


def _standardize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return (x - mean) / std


def fit_softmax_probes(x: Tensor, labels: Tensor, n_classes: list[int], l2: float = 1.0,
                       max_iter: int = 200) -> tuple[Tensor, Tensor]:
    """Fit ``K`` probes x ``T`` targets of multinomial logistic regression at once.

    ``x`` is ``(n, K, d)`` standardized features, ``labels`` is ``(n, T)``. Returns weights
    ``(K, d, C)`` and biases ``(K, C)`` with ``C = sum(n_classes)``; target ``t`` owns the class
    block ``offsets[t]:offsets[t+1]``. Minimizes, per probe, summed cross-entropy over targets plus
    ``0.5 * l2 * ||W||^2`` (scikit-learn's objective with ``C = 1 / l2``) by L-BFGS.
    """
    n, k, d = x.shape
    xk = x.transpose(0, 1).contiguous()  # (K, n, d): one batched matmul per evaluation
    xt = xk.transpose(1, 2)
    offsets = np.concatenate([[0], np.cumsum(n_classes)]).tolist()
    label_index = [labels[:, t].view(1, n, 1).expand(k, n, 1) for t in range(len(n_classes))]
    minus_one = torch.full((k, n, 1), -1.0, device=x.device)
    weight = torch.zeros(k, d, offsets[-1], device=x.device)
    bias = torch.zeros(k, 1, offsets[-1], device=x.device)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-5, tolerance_change=1e-7,
                                  line_search_fn="strong_wolfe")

    @torch.no_grad()
    def closure():
        # The gradient in closed form (softmax minus one-hot), not by autograd: the same
        # objective and optimizer, 1.3x faster per fit on 2 CPU cores (decision 68).
        logits = torch.baddbmm(bias, xk, weight)  # (K, n, C)
        loss = 0.5 * l2 * weight.pow(2).sum()
        for t in range(len(n_classes)):
            block = logits[..., offsets[t]:offsets[t + 1]]
            logp = block.log_softmax(-1)
            loss = loss - logp.gather(-1, label_index[t]).sum()
            block.copy_(logp.exp_().scatter_add_(-1, label_index[t], minus_one))  # d loss / d logits
        weight.grad = torch.baddbmm(weight, xt, logits, beta=l2).div_(n)
        bias.grad = logits.sum(1, keepdim=True).div_(n)
        return loss / n  # keeps line-search numbers moderate; the optimum is unchanged

    optimizer.step(closure)
    return weight, bias[:, 0]


def predict_probes(x: Tensor, weight: Tensor, bias: Tensor, n_classes: list[int]) -> Tensor:
    """Predicted class per example, probe and target: ``(n, K, T)``."""
    logits = torch.baddbmm(bias[:, None], x.transpose(0, 1), weight).transpose(0, 1)
    offsets = np.concatenate([[0], np.cumsum(n_classes)])
    return torch.stack([logits[..., offsets[t]:offsets[t + 1]].argmax(-1)
                        for t in range(len(n_classes))], dim=-1)


@dataclass
class ProbeResult(Result):
    """Accuracy per target, residual point, position and evaluation group, with controls."""

    frame: pd.DataFrame
    site_limits: dict[str, int] = field(default_factory=dict)
    name = "probes"

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def best(self, select_group: str = "clean_heldout") -> pd.DataFrame:
        """Per target, the (point, position) with the best accuracy on ``select_group``, and the
        accuracies of every group at that probe. Sites after ``site_limits[target]`` are not
        eligible: there the teacher-forced answer tokens already show the target."""
        f = self.frame
        groups = sorted(f["group"].unique())
        if select_group not in groups:
            raise AnalysisError(f"select_group {select_group!r} is not an evaluated group: "
                                f"the probes were evaluated on {groups}")
        rows = []
        for target, part in f.groupby("target", sort=False):
            sel = part[part["group"] == select_group]
            if target in self.site_limits:
                sel = sel[sel["position"] <= self.site_limits[target]]
            if sel.empty:  # every site of this target lies past its limit
                continue
            top = sel.loc[sel["accuracy"].idxmax()]
            at = part[(part["point"] == top["point"]) & (part["position"] == top["position"])]
            row = {"target": target, "variable": top["variable"], "point": top["point"],
                   "position": int(top["position"])}
            for _, r in at.iterrows():
                row[f"{r['group']}_acc"] = r["accuracy"]
                row[f"{r['group']}_majority"] = r["majority"]
                row[f"{r['group']}_shuffled"] = r["shuffled"]
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        return {"best": self.best().to_dict(orient="records"), "site_limits": self.site_limits}

    @staticmethod
    def render(data: dict, target: str | None = None, group: str = "clean_heldout"):
        """Heatmap of probe accuracy, residual point x position, for one target."""
        import plotly.express as px

        frame = pd.DataFrame(data["frame"])
        target = target or frame["target"].iloc[0]
        part = frame[(frame["target"] == target) & (frame["group"] == group)]
        grid = part.pivot(index="point", columns="position", values="accuracy")
        grid = grid.loc[list(dict.fromkeys(part["point"]))]
        fig = px.imshow(grid, zmin=0, zmax=1, color_continuous_scale="Viridis", aspect="auto",
                        labels={"color": "accuracy"},
                        title=f"Probe accuracy for {target} on {group}")
        return fig

    def figure(self, target: str | None = None, group: str = "clean_heldout"):
        return self.render(self.to_json(), target, group)


def probe_points(n_layers: int) -> list[tuple[str, str]]:
    """Residual points probed: the input of every layer and the final residual."""
    points = [(f"L{layer}.pre", f"blocks.{layer}.hook_resid_pre") for layer in range(n_layers)]
    return points + [(f"L{n_layers - 1}.post", f"blocks.{n_layers - 1}.hook_resid_post")]


def probe_features(model: Model, examples: Examples, positions: list[int], chunk_size: int = 1024) -> Tensor:
    """Residual activations ``(n, points * positions, d_model)`` at every probe point (outer)
    and position (inner), on the model's device."""
    hooks = [h for _, h in probe_points(model.cfg.n_layers)]
    acts = cached_activations(model, examples.tokens, hooks, positions, chunk_size)
    return torch.stack([acts[h] for h in hooks], 1).flatten(1, 2).float().to(model_device(model))


def fit_probes(model: Model, fit: Examples, evaluate: dict[str, Examples], variables: list[str] | str,
               *, positions: list[int] | None = None, l2: float = 1.0, max_iter: int = 100,
               controls: bool = True, seed: int = 0, chunk_size: int = 1024,
               site_limits: dict[str, int] | None = None) -> ProbeResult:
    """Fit probes for ``variables`` on ``fit`` examples; score them on every ``evaluate`` group.

    Noisy examples keep intermediates computed from their true inputs, so their probe accuracy
    says whether the model still computes the intermediate where it memorized the label. Only
    examples of the kind that can carry noise are probed (``TaskBase.analysis_mask``: for THR,
    atomic facts are left out, their "bridge" is the answer). ``site_limits`` maps a target label
    to the last position eligible as its best site (``ProbeResult.best``).

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> s = task.generate(seed=0).splits
    >>> res = fit_probes(model, s["train_clean"][:300], {"noisy": s["train_noisy"]}, "carry",
    ...                  positions=[6], max_iter=20)
    >>> sorted(res.to_frame()["group"].unique())
    ['noisy']
    """
    variables = [variables] if isinstance(variables, str) else list(variables)
    check_examples(model, fit, "fit examples")
    for name, ex in evaluate.items():
        check_examples(model, ex, f"group {name!r}")
    for v in variables:
        if v not in fit.intermediates:
            raise AnalysisError(f"unknown intermediate {v!r}; valid names: {probe_variables(fit)}")
    positions = check_positions(fit.tokens.shape[1], positions)

    fit = analysis_subset(fit)
    evaluate = {k: analysis_subset(v) for k, v in evaluate.items()}
    for name, ex in {"fit": fit, **evaluate}.items():
        if len(ex) == 0:
            raise AnalysisError(f"group {name!r} has no examples to probe")
    points = probe_points(model.cfg.n_layers)

    def features(ex: Examples) -> Tensor:
        return probe_features(model, ex, positions, chunk_size)

    # Probes fit where the model runs: on a GPU the batched L-BFGS is the bulk of the work.
    device = model_device(model)
    x_fit = features(fit)
    mean, std = x_fit.mean(0), x_fit.std(0).clamp(min=1e-6)
    x_fit = _standardize(x_fit, mean, std)
    targets = [t for v in variables for t in probe_targets(fit, v)]
    n_classes = [t.n_classes for t in targets]
    y_fit = torch.stack([t.values(fit) for t in targets], 1).to(device)
    weight, bias = fit_softmax_probes(x_fit, y_fit, n_classes, l2, max_iter)
    if controls:
        gen = torch.Generator().manual_seed(seed)
        y_shuffled = y_fit[torch.randperm(len(y_fit), generator=gen).to(device)]
        w_shuf, b_shuf = fit_softmax_probes(x_fit, y_shuffled, n_classes, l2, max_iter)
    majority = [int(torch.bincount(y_fit[:, i], minlength=c).argmax()) for i, c in enumerate(n_classes)]

    labels = [(p, pos) for p, _ in points for pos in positions]
    rows = []
    for group, ex in evaluate.items():
        x = _standardize(features(ex), mean, std)
        y = torch.stack([t.values(ex) for t in targets], 1).to(device)
        hit = (predict_probes(x, weight, bias, n_classes) == y[:, None]).float().mean(0).cpu()  # (K, T)
        hit_shuf = ((predict_probes(x, w_shuf, b_shuf, n_classes) == y[:, None]).float().mean(0).cpu()
                    if controls else torch.full_like(hit, float("nan")))
        y = y.cpu()
        for ti, t in enumerate(targets):
            maj = float((y[:, ti] == majority[ti]).float().mean())
            for k, (point, pos) in enumerate(labels):
                rows.append({"target": t.label, "variable": t.variable, "point": point,
                             "position": pos, "group": group, "n": len(ex),
                             "accuracy": float(hit[k, ti]), "majority": maj,
                             "shuffled": float(hit_shuf[k, ti])})
    return ProbeResult(frame=pd.DataFrame(rows), site_limits=dict(site_limits or {}))


@dataclass
class ProbeStudyResult(Result):
    """Claim 3's probes: per target, the eligible sites' accuracies, the chosen site, its
    controls, and per-example correctness there (``examples[group]``: 0/1 lists)."""

    frame: pd.DataFrame
    targets: list[dict]
    allowed_points: list[str]
    takeover_point: str | None = None
    name = "probes"

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def summary(self) -> dict:
        return {"allowed_points": self.allowed_points, "takeover_point": self.takeover_point,
                "targets": self.targets}

    @staticmethod
    def render(data: dict):
        """Per target, at its chosen site: accuracy on held-out clean examples, on noisy examples
        (as trained and with the true label forced) and the control."""
        import plotly.graph_objects as go

        targets = data["summary"]["targets"]
        labels = [f"{t['label']} @ {t['site']['point']}, pos {t['site']['position']}" for t in targets]
        fig = go.Figure()
        for key, name in (("heldout", "held-out clean"), ("noisy", "noisy"),
                          ("noisy_true_forced", "noisy, true label forced")):
            fig.add_bar(x=labels, y=[t["accuracy"].get(key) for t in targets], name=name)
        fig.add_scatter(x=labels, y=[t["control"] for t in targets], mode="markers", name="control",
                        marker={"symbol": "line-ew-open", "size": 28, "color": "black"})
        takeover = data["summary"].get("takeover_point")
        fig.update_layout(title="Probes at each intermediate's chosen eligible site"
                          + (f" (sites before {takeover})" if takeover else ""), barmode="group",
                          yaxis_title="accuracy", yaxis_range=[0, 1], height=400)
        return fig


def _probe_accuracy(x: Tensor, y: Tensor, weight: Tensor, bias: Tensor, n_classes: list[int]) -> Tensor:
    """Per-example correctness ``(n, K, T)`` of every probe."""
    return predict_probes(x, weight, bias, n_classes) == y[:, None]


def probe_study(model: Model, groups: dict[str, Examples], entries: list[tuple[str, int | None]],
                eligible: dict[str, list[int]], *, allowed_points: list[str] | None = None,
                takeover_point: str | None = None, control_model=None, seed: int = 0, max_iter: int = 100,
                chunk_size: int = 1024) -> ProbeStudyResult:
    """Probes for claim 3: fit on ``groups["fit"]``, choose each target's site on
    ``groups["select"]`` among ``eligible[label]`` positions x ``allowed_points``, evaluate there
    on every other group (per example); ``takeover_point`` (recorded) is where the noisy label
    takes over, which ``allowed_points`` precede. Controls at the chosen site, on ``groups["heldout"]``:
    the majority class, a probe fitted on shuffled targets, and (``control_model``, e.g. the
    untrained model) a probe fitted on that model's activations.

    ``entries`` are ``(intermediate, column)`` pairs; intermediates with more than 100 values
    are probed per decimal digit (``ProbeTarget``), entities as a whole.

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> c = task.generate(0).splits["train_clean"]
    >>> res = probe_study(model, {"fit": c[:300], "select": c[300:500], "heldout": c[500:700]},
    ...                   [("carry", 1)], {"carry[1]": task.eligible_positions("carry", 1)}, max_iter=10)
    >>> res.targets[0]["label"], sorted(res.targets[0]["examples"])
    ('carry[1]', ['heldout', 'select'])
    """
    for name in ("fit", "select", "heldout"):
        if name not in groups:
            raise AnalysisError(f"probe_study needs a {name!r} group; got {sorted(groups)}")
    groups = {k: analysis_subset(v) for k, v in groups.items()}
    for name, ex in groups.items():
        check_examples(model, ex, f"group {name!r}")
    fit = groups["fit"]
    targets: list[ProbeTarget] = []
    for variable, column in entries:
        found = [t for t in probe_targets(fit, variable) if t.column == column]
        if not found:
            raise AnalysisError(f"{variable!r} has no column {column!r} to probe")
        for t in found:
            if t.label.split(".digit")[0] not in eligible:
                raise AnalysisError(f"no eligible positions given for {t.label!r}")
        targets += found
    base_label = {t.label: t.label.split(".digit")[0] for t in targets}
    positions = sorted({p for t in targets for p in eligible[base_label[t.label]]})
    positions = check_positions(fit.tokens.shape[1], positions)
    point_names = [p for p, _ in probe_points(model.cfg.n_layers)]
    allowed = point_names if allowed_points is None else [p for p in point_names if p in allowed_points]
    if not allowed:
        raise AnalysisError(f"allowed_points={allowed_points!r} names none of {point_names}")
    sites = [(p, pos) for p in point_names for pos in positions]
    n_classes = [t.n_classes for t in targets]
    device = model_device(model)
    labels = {k: torch.stack([t.values(v) for t in targets], 1).to(device) for k, v in groups.items()}

    # Targets that share their eligible positions are fitted together, at those sites only:
    # a probe at a position a target may not use is never read.
    by_positions: dict[tuple[int, ...], list[int]] = {}
    for ti, t in enumerate(targets):
        by_positions.setdefault(tuple(sorted(eligible[base_label[t.label]])), []).append(ti)
    x_fit = probe_features(model, fit, positions, chunk_size)
    x_groups = {g: probe_features(model, ex, positions, chunk_size) for g, ex in groups.items() if g != "fit"}
    correct = {g: torch.zeros(len(x), len(sites), len(targets), dtype=torch.bool) for g, x in x_groups.items()}
    for ok_pos, tis in by_positions.items():
        ks = [k for k, (_, pos) in enumerate(sites) if pos in ok_pos]
        xk = x_fit[:, ks]
        mean, std = xk.mean(0), xk.std(0).clamp(min=1e-6)
        classes = [n_classes[ti] for ti in tis]
        w, b = fit_softmax_probes(_standardize(xk, mean, std), labels["fit"][:, tis], classes, max_iter=max_iter)
        for g, x in x_groups.items():
            hits = _probe_accuracy(_standardize(x[:, ks], mean, std), labels[g][:, tis], w, b, classes).cpu()
            correct[g][:, torch.tensor(ks)[:, None], torch.tensor(tis)[None, :]] = hits
    majority = [int(torch.bincount(labels["fit"][:, i], minlength=c).argmax()) for i, c in enumerate(n_classes)]

    rows, chosen = [], {}
    for ti, t in enumerate(targets):
        ok_pos = set(eligible[base_label[t.label]])
        keep = [k for k, (p, pos) in enumerate(sites) if pos in ok_pos]
        for group, hits in correct.items():
            for k in keep:
                rows.append({"target": t.label, "variable": t.variable, "point": sites[k][0],
                             "position": sites[k][1], "group": group, "n": len(hits),
                             "accuracy": float(hits[:, k, ti].float().mean())})
        choosable = [k for k in keep if sites[k][0] in allowed]
        if choosable:
            select_acc = correct["select"][:, choosable, ti].float().mean(0)
            chosen[ti] = (choosable[int(select_acc.argmax())], float(select_acc.max()))

    def heldout_at_chosen(x: Tensor, z_held: Tensor, y_fit: Tensor) -> dict[int, float]:
        """Held-out accuracy of probes fitted on activations ``x`` (fit group) at each target's
        chosen site only (the controls are read nowhere else): one small fit per distinct site,
        where fitting every target at every site cost two full fits more."""
        out: dict[int, float] = {}
        for k in sorted({k for k, _ in chosen.values()}):
            tis = [ti for ti, (kk, _) in chosen.items() if kk == k]
            xk = x[:, [k]]
            mean, std = xk.mean(0), xk.std(0).clamp(min=1e-6)
            w, b = fit_softmax_probes(_standardize(xk, mean, std), y_fit[:, tis],
                                      [n_classes[ti] for ti in tis], max_iter=max_iter)
            hits = _probe_accuracy(_standardize(z_held[:, [k]], mean, std), labels["heldout"][:, tis],
                                   w, b, [n_classes[ti] for ti in tis])  # (n, 1, len(tis))
            out.update({ti: float(hits[:, 0, j].float().mean()) for j, ti in enumerate(tis)})
        return out

    gen = torch.Generator().manual_seed(seed)
    heldout_shuffled = heldout_at_chosen(x_fit, x_groups["heldout"],
                                         labels["fit"][torch.randperm(len(fit), generator=gen).to(device)])
    heldout_untrained = None
    if control_model is not None:
        heldout_untrained = heldout_at_chosen(probe_features(control_model, fit, positions, chunk_size),
                                              probe_features(control_model, groups["heldout"], positions, chunk_size),
                                              labels["fit"])

    out = []
    for ti, t in enumerate(targets):
        if ti not in chosen:
            continue
        k, select_accuracy = chosen[ti]
        held_y = labels["heldout"][:, ti].cpu()
        controls = {"majority": float((held_y == majority[ti]).float().mean()),
                    "shuffled": heldout_shuffled[ti]}
        if heldout_untrained is not None:
            controls["untrained"] = heldout_untrained[ti]
        out.append({
            "label": t.label, "variable": t.variable, "column": t.column, "digit": t.digit,
            "n_classes": t.n_classes, "site": {"point": sites[k][0], "position": sites[k][1]},
            "eligible_positions": sorted(eligible[base_label[t.label]]), "select_accuracy": select_accuracy,
            "controls": controls, "control": max(controls.values()),
            "accuracy": {g: float(h[:, k, ti].float().mean()) for g, h in correct.items()},
            "examples": {g: h[:, k, ti].int().tolist() for g, h in correct.items()},
        })
    return ProbeStudyResult(frame=pd.DataFrame(rows), targets=out, allowed_points=allowed,
                            takeover_point=takeover_point)
