"""The claims scorecard: every claim as pre-registered parts with bootstrap intervals.

docs/claims.md defines each part (statistic, units, control, threshold, what falsifies it); this
module computes them from run directories. Per part: one value per seed, a hierarchical
bootstrap interval (``memlens.stats``), a verdict (``holds``, ``does not hold``,
``inconclusive``, ``not measured``), the controls beside the statistic, and the value on the
pure-memorizer reference where it is defined. :func:`claim_verdicts` combines a claim's parts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from memlens.analysis.common import AnalysisError
from memlens.analysis.heuristics import matched_shares
from memlens.analysis.logit_lens import takeover_point
from memlens.analysis.runner import load_analysis
from memlens.analysis.schemas import SchemaError
from memlens.analysis.schemas import check as check_schema
from memlens.config import ConfigError
from memlens.stats import hierarchical_bootstrap, passes, resample, verdict

GENERALIZED, MEMORIZED = 0.9, 0.5  # the stage gate of claims 3-7
N_BOOT = 2000


class NotMeasured(Exception):
    """The data a part needs is not there; the message says why."""


class Unpaired(NotMeasured):
    """A paired part (claim 2 against the noise-free baseline of the same seed) on a seed that
    has no baseline: that seed is left out of the part (docs/claims.md: baselines cover seeds
    0..2 at least), not a reason to call the part not measured."""


# -- one run's data ----------------------------------------------------------------------------
@dataclass
class RunData:
    """Lazy access to what a run directory holds."""

    path: Path

    @cached_property
    def header(self) -> dict:
        from memlens.training.run import read_header

        return read_header(self.path)

    @cached_property
    def task(self):
        from memlens.tasks import task_from_config

        run = self.header["run"]
        return task_from_config(run["task"], run["task_config"])

    @cached_property
    def summary(self) -> dict:
        from memlens.training.run import read_summary

        return read_summary(self.path)

    @cached_property
    def metrics(self) -> list[dict]:
        from memlens.training.run import read_metrics

        return read_metrics(self.path)

    def analysis(self, name: str) -> dict:
        try:
            data = load_analysis(self.path, name)
        except AnalysisError as err:
            raise NotMeasured(str(err)) from None
        try:
            check_schema(name, data["summary"])
        except SchemaError as err:  # written by an older memlens: say how to refresh it
            raise NotMeasured(f"{self.path / 'analysis' / (name + '.json')} is out of date ({err}): "
                              f"rerun `memlens analyze {self.path} --only {name}`") from None
        return data

    def finished(self) -> dict:
        if "final_metrics" not in self.summary:
            raise NotMeasured("the run has not finished training")
        return self.summary["final_metrics"]

    def gate(self) -> None:
        """Claims 3-7: the model memorized the noise while generalizing."""
        final = self.finished()
        if final["test_acc"] < GENERALIZED:
            raise NotMeasured(f"the model did not generalize (final test accuracy "
                              f"{final['test_acc']:.3f} < {GENERALIZED})")
        if not final.get("noisy_memorized_acc", 0) >= MEMORIZED:
            raise NotMeasured(f"the model did not memorize the noise (final noisy recall "
                              f"{final.get('noisy_memorized_acc', float('nan')):.3f} < {MEMORIZED})")

    def eval_sizes(self) -> dict[str, int]:
        """How many examples each logged accuracy is over (the trainer's evaluation subsets)."""
        cap = self.header["run"]["train"].get("eval_max_per_split", 2000)
        stats = self.header.get("dataset_stats", {})
        n_train = stats.get("n_train", stats.get("n_atomic", 0) + stats.get("n_inferred_train", 0))
        n_noisy = stats.get("n_noisy", 0)
        return {"test": min(cap, stats.get("n_test", cap)), "noisy": min(cap, n_noisy),
                "clean": min(cap, max(n_train - n_noisy, 0))}


# -- helpers -------------------------------------------------------------------------------------
def crossing(steps: np.ndarray, values: np.ndarray, threshold: float) -> float:
    """Step where ``values`` first reaches ``threshold``, interpolated linearly between
    evaluations; ``inf`` if never.

    >>> crossing(np.array([0, 100, 200]), np.array([0.0, 0.4, 0.8]), 0.6)
    150.0
    """
    hit = np.nonzero(values >= threshold)[0]
    if not len(hit):
        return float("inf")
    i = int(hit[0])
    if i == 0:
        return float(steps[0])
    v0, v1 = values[i - 1], values[i]
    return float(steps[i - 1] + (threshold - v0) / (v1 - v0) * (steps[i] - steps[i - 1]))


def _binomial(values: np.ndarray, n: int, rng: np.random.Generator | None) -> np.ndarray:
    """Logged accuracies, or (with ``rng``) redrawn as Binomial(n, a) / n."""
    if rng is None or n <= 0:
        return values
    return rng.binomial(n, np.clip(values, 0, 1)) / n


def _mean(values: list | np.ndarray, rng) -> float:
    values = np.asarray(values, dtype=float)
    if not len(values):
        return float("nan")
    return float(values[resample(len(values), rng)].mean())


def _curves(run: RunData) -> dict:
    rows = run.metrics
    if not rows:
        raise NotMeasured("metrics.jsonl is empty")
    run.finished()

    def col(name):
        return np.array([r.get(name, np.nan) for r in rows], dtype=float)
    return {"steps": col("step"), "test": col("test_acc"), "mem": col("noisy_memorized_acc"),
            "true": col("noisy_true_acc"), "n": run.eval_sizes()}


# -- claim 1 -----------------------------------------------------------------------------------
def load_curves(run: RunData) -> dict:
    d = _curves(run)
    if not np.isfinite(crossing(d["steps"], d["mem"], 0.5)):
        raise NotMeasured("noisy recall never reached 0.5")
    return d


def lag_fraction(d: dict, rng) -> float:
    test = _binomial(d["test"], d["n"]["test"], rng)
    mem = _binomial(d["mem"], d["n"]["noisy"], rng)
    t_gen, t_mem = crossing(d["steps"], test, 0.9), crossing(d["steps"], mem, 0.5)
    if not np.isfinite(t_gen):
        return -1.0
    if not np.isfinite(t_mem):
        return 1.0
    return (t_mem - t_gen) / max(t_mem, t_gen, 1e-9)


def true_label_first(d: dict, rng) -> float:
    test = _binomial(d["test"], d["n"]["test"], rng)
    mem = _binomial(d["mem"], d["n"]["noisy"], rng)
    true = _binomial(d["true"], d["n"]["noisy"], rng)
    before = d["steps"] < crossing(d["steps"], mem, 0.5)
    if not before.any():
        return 0.0
    i = int(np.argmax(np.where(before, true, -1)))
    return 0.0 if test[i] <= 0 else float(min(1.0, true[i] / test[i]))


# -- claim 2 -----------------------------------------------------------------------------------
def load_behaviour(run: RunData) -> dict:
    run.finished()
    return run.analysis("behaviour")


def final_recall(d: dict, rng) -> float:
    ex = d["summary"]["examples"].get("noisy_recall")
    if ex is None:
        raise NotMeasured("the run has no noisy examples")
    return _mean(ex, rng)


def load_paired_test(run: RunData) -> dict:
    d = load_behaviour(run)
    base = d["summary"].get("baseline")
    if not base:
        raise Unpaired("no noise-free baseline was given to the behaviour analysis "
                          "(`memlens analyze RUN --only behaviour --baseline CLEAN_RUN`)")
    return {"diff": np.array(d["summary"]["examples"]["test_correct"], float)
            - np.array(base["examples"]["test_correct"], float)}


def paired_difference(d: dict, rng) -> float:
    return _mean(d["diff"], rng)


def _recorded_run(run: RunData, recorded: str) -> Path:
    """A run directory recorded in an analysis (the noise-free baseline): where it was, or, for
    a study moved or copied elsewhere (trained on another machine), beside this run."""
    from memlens.training.run import CONFIG

    where = Path(recorded)
    for candidate in (where, run.path.parent / where.name):
        if (candidate / CONFIG).exists():
            return candidate
    raise NotMeasured(f"the recorded baseline run {recorded} is not found, nor beside this run "
                      f"({run.path.parent / where.name})")


def load_phase(run: RunData) -> dict:
    d = _curves(run)
    behaviour = load_behaviour(run)
    if "baseline" not in behaviour:
        raise Unpaired("no noise-free baseline run recorded in behaviour.json")
    base = RunData(_recorded_run(run, behaviour["baseline"]))
    base_rows = {r["step"]: r["test_acc"] for r in base.metrics}
    start = np.nonzero(d["mem"] >= 0.1)[0]
    if not len(start):
        raise NotMeasured("noisy recall never reached 0.1: no memorization phase")
    end = np.nonzero(d["mem"] >= 0.9)[0]
    stop = int(end[0]) if len(end) else len(d["steps"]) - 1
    idx = [i for i in range(int(start[0]), stop + 1) if d["steps"][i] in base_rows]
    if not idx:
        raise NotMeasured("the baseline has no evaluations at the memorization phase's steps")
    return {"test": d["test"][idx], "base": np.array([base_rows[d["steps"][i]] for i in idx]),
            "n": d["n"]["test"], "steps": d["steps"][idx].tolist()}


def worst_phase_difference(d: dict, rng) -> float:
    return float(np.min(_binomial(d["test"], d["n"], rng) - _binomial(d["base"], d["n"], rng)))


def load_neighbours(run: RunData) -> dict:
    d = load_behaviour(run)["summary"]
    leak = d["examples"].get("neighbour_leak")
    if not leak:
        raise NotMeasured("no neighbours of noisy examples were evaluated")
    source = np.array(d["neighbour_source"])
    clusters = [np.nonzero(source == s)[0] for s in np.unique(source)]
    base = (d.get("baseline") or {}).get("examples", {})
    controls = {"neighbour accuracy": float(np.mean(d["examples"]["neighbour_accuracy"]))}
    for key, name in (("neighbour_leak", "baseline leak"), ("neighbour_accuracy", "baseline neighbour accuracy")):
        if base.get(key):  # older behaviour.json files hold no baseline neighbour accuracy
            controls[name] = float(np.mean(base[key]))
    return {"leak": np.array(leak, float), "clusters": clusters, "controls": controls}


def leak_rate(d: dict, rng) -> float:
    chosen = [d["clusters"][i] for i in resample(len(d["clusters"]), rng)]
    return float(d["leak"][np.concatenate(chosen)].mean())


# -- claim 3 -----------------------------------------------------------------------------------
MIN_SELECTIVITY = 0.1


def load_probes(group: str):
    def load(run: RunData) -> dict:
        run.gate()
        summary = run.analysis("probes")["summary"]
        if not summary["targets"] and not summary["allowed_points"]:
            raise NotMeasured(f"the noisy label leads from the first residual point on (takeover at "
                              f"{summary['takeover_point']}): no point before it to probe")
        counted, skipped = [], []
        for t in summary["targets"]:
            if t["controls"]["majority"] >= 0.99:
                continue  # a constant target says nothing
            held = np.array(t["examples"]["heldout"], float)
            if held.mean() - t["control"] >= MIN_SELECTIVITY:
                counted.append({"label": t["label"], "control": t["control"], "heldout": held,
                                "noisy": np.array(t["examples"][group], float),
                                "controls": t["controls"]})
            else:
                skipped.append(t["label"])
        if not counted:
            raise NotMeasured(f"no intermediate is read on clean examples {MIN_SELECTIVITY} above "
                              f"its control (not computed: {', '.join(skipped) or 'none probed'})")
        controls = {k: float(np.mean([t["controls"].get(k, np.nan) for t in counted]))
                    for k in ("majority", "shuffled", "untrained")}
        return {"targets": counted, "not_computed": skipped, "controls": controls,
                "n": len(counted[0]["noisy"])}
    return load


def probe_ratio(d: dict, rng) -> float:
    t0 = d["targets"][0]
    i_held, i_noisy = resample(len(t0["heldout"]), rng), resample(len(t0["noisy"]), rng)
    ratios = []
    for t in d["targets"]:
        clean = t["heldout"][i_held].mean() - t["control"]
        noisy = t["noisy"][i_noisy].mean() - t["control"]
        ratios.append(noisy / clean if clean > 0 else 0.0)
    return float(min(ratios))


MIN_CLEAN_MRR = 0.25


def load_lens(run: RunData) -> dict:
    run.gate()
    first = run.analysis("logit_lens")["summary"].get("first_slot")
    if not first:
        raise NotMeasured("logit_lens.json has no first-slot ranks (rerun the analysis)")
    noisy = first["ranks"]["train_noisy"]
    true, label = np.array(noisy["true"]), np.array(noisy["noisy"])
    clean = np.array(first["ranks"]["test"]["true"])
    order = np.random.default_rng(0).permutation(len(true))
    halves = [order[: len(order) // 2], order[len(order) // 2:]]
    pairs = []
    for select, evaluate in (halves, halves[::-1]):
        import torch

        p = takeover_point(torch.tensor(true[select]), torch.tensor(label[select]))
        if p is None:
            raise NotMeasured("the noisy label does not lead at the last point on half of the "
                              "noisy examples")
        if p > 0 and (1 / (1 + clean[:, p - 1])).mean() < MIN_CLEAN_MRR:
            raise NotMeasured(f"the true answer has not formed on clean examples either at the "
                              f"point before the takeover (reciprocal rank < {MIN_CLEAN_MRR})")
        pairs.append((p, true[evaluate]))
    return {"pairs": pairs, "clean": clean, "n": len(true)}


def lens_ratio(d: dict, rng) -> float:
    ratios = []
    clean_idx = resample(len(d["clean"]), rng)
    for p, true in d["pairs"]:
        if p == 0:
            ratios.append(0.0)
            continue
        noisy_rr = (1 / (1 + true[resample(len(true), rng), p - 1])).mean()
        clean_rr = (1 / (1 + d["clean"][clean_idx, p - 1])).mean()
        ratios.append(noisy_rr / clean_rr)
    return float(np.mean(ratios))


# -- claims 4 and 5 ------------------------------------------------------------------------------
def load_dependence(group: str, gated: bool = True):
    def load(run: RunData) -> dict:
        if gated:
            run.gate()
        else:
            run.finished()
        summary = run.analysis("patching")["summary"]
        items = []
        for name, column in run.task.entries(claim=4):
            label = run.task.intermediate(name).label(column)
            if label not in summary:
                raise NotMeasured(f"patching.json has no {label}")
            ex = summary[label].get(group)
            if not ex or not ex["examples"]["base"]:
                raise NotMeasured(f"no {group} examples evaluated for {label}")
            items.append({k: np.array(v, float) for k, v in ex["examples"].items()})
        return {"items": items, "n": sum(len(i["base"]) for i in items)}
    return load


def _per_item(fn: Callable[[dict], np.ndarray]) -> Callable[[dict, Any], float]:
    def value(d: dict, rng) -> float:
        return float(np.mean([_mean(fn(item), rng) for item in d["items"]]))
    return value


specific_loss = _per_item(lambda i: i["patch_preserve"] - i["patch_change"])
input_specific_loss = _per_item(lambda i: i["input_preserve"] - i["input_change"])
preserving_input_loss = _per_item(lambda i: i["base"] - i["input_preserve"])


def load_inlp(run: RunData) -> dict:
    run.gate()
    items, not_removed = [], []
    for label, item in run.analysis("interventions")["summary"].items():
        s = item["settings"]
        if not s.get("removed"):
            after = s["inlp_probe_accuracy_before_each_iteration_and_after"][-1]
            not_removed.append(f"{label}: probe {after:.3f} > majority {s['majority']:.3f} + "
                               f"{s['tolerance']}")
            continue
        ex = item["examples"]
        items.append({"diff": np.array(ex["random_subspace"]) - np.array(ex["inlp"])})
    if not items:
        raise NotMeasured("INLP did not remove the intermediate (" + "; ".join(not_removed) + ")")
    return {"items": items, "n": sum(len(i["diff"]) for i in items)}


inlp_loss = _per_item(lambda i: i["diff"])


# -- claim 6 -----------------------------------------------------------------------------------
def load_neurons(run: RunData) -> dict:
    run.gate()
    summary = run.analysis("neurons")["summary"]
    per = {k: np.array(v) if v is not None else None for k, v in summary["per_neuron"].items()}
    if not per["outlier"].any():
        raise NotMeasured("no neuron-position is an outlier on noisy examples")
    return {**per, "n": len(per["outlier"]), "summary": summary}


def outlier_share(d: dict, rng) -> float:
    idx = resample(d["n"], rng)
    out, heur = d["outlier"][idx].astype(bool), d["heuristic"][idx].astype(bool)
    return float(heur[out].mean()) if out.any() else float("nan")


def enrichment(d: dict, rng) -> float:
    import torch

    idx = resample(d["n"], rng)
    out = torch.tensor(d["outlier"][idx].astype(bool))
    if not out.any():
        return float("nan")
    share, matched = matched_shares(out, torch.tensor(d["heuristic"][idx].astype(bool)),
                                    torch.tensor(d["variance_decile"][idx]))
    return share - matched


def load_null(run: RunData) -> dict:
    d = load_neurons(run)
    if d["null_outlier"] is None:
        raise NotMeasured("no pre-memorization null: " + str(d["summary"].get("null_note")))
    return d


def beyond_null(d: dict, rng) -> float:
    idx = resample(d["n"], rng)
    n_final = d["outlier"][idx].sum()
    return float(1 - d["null_outlier"][idx].sum() / n_final) if n_final else float("nan")


def load_reset(run: RunData) -> dict:
    d = load_neurons(run)
    patching = d["summary"].get("patching")
    if not patching or "other heuristic neurons" not in patching["examples"]:
        raise NotMeasured("no outlier reset with a heuristic-neuron control was measured")
    ex = patching["examples"]
    table = {row["variant"]: row for row in patching["table"]}
    return {"diff": np.array(ex["other heuristic neurons"]) - np.array(ex["outlier neurons"]),
            "n": len(ex["outlier neurons"]),
            "controls": {"clean accuracy, outliers reset": table["outlier neurons"]["train_clean_acc"],
                         "recall, outliers reset": table["outlier neurons"]["noisy_memorized_acc"],
                         "recall, other heuristic neurons reset":
                             table["other heuristic neurons"]["noisy_memorized_acc"]}}


def reset_loss(d: dict, rng) -> float:
    return _mean(d["diff"], rng)


# -- claim 7 -----------------------------------------------------------------------------------
def load_circuits(run: RunData) -> dict:
    run.gate()
    summary = run.analysis("circuits")["summary"]
    if "overlap_statistic" not in summary and "normalized_overlap" not in summary:
        raise NotMeasured("circuits.json predates the faithfulness-grown circuits (rerun "
                          "`memlens analyze RUN --only circuits`)")
    return {"summary": summary, "n": summary.get("n_examples")}


def circuit_overlap(d: dict, rng) -> float:
    from memlens.analysis.circuit_study import overlap_statistic

    return overlap_statistic(d["summary"], rng)


def cross_faithfulness(d: dict, rng) -> float:
    from memlens.analysis.circuit_study import cross_faithfulness_statistic

    return cross_faithfulness_statistic(d["summary"], rng)


# -- the parts -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """One pre-registered statistic of a claim (docs/claims.md)."""

    claim: int
    part: str
    statistic: str
    threshold: float
    direction: str
    role: str  # "verdict" or "diagnostic"
    units: str
    load: Callable[[RunData], dict]
    value: Callable[[dict, Any], float]
    reference_rule: bool = False  # a pure memorizer passing it makes "holds" inconclusive
    reference_load: Callable[[RunData], dict] | None = None

    @property
    def key(self) -> str:
        return f"{self.claim}{self.part}"


PARTS: list[Part] = [
    Part(1, "a", "lag fraction (t_mem - t_gen) / max(t_mem, t_gen): test 0.9 before noisy recall 0.5",
         0.0, ">", "verdict", "evaluations (binomial)", load_curves, lag_fraction,
         reference_load=lambda r: _curves(r)),
    Part(1, "b", "noisy examples answered with their true label before memorization: "
         "noisy_true / test at the noisy_true peak", 0.8, ">=", "verdict", "evaluations (binomial)",
         load_curves, true_label_first),
    Part(2, "a", "final noisy recall", 0.9, ">=", "verdict", "noisy examples", load_behaviour,
         final_recall, reference_load=load_behaviour),
    Part(2, "b", "final test accuracy with noise minus the noise-free baseline's (paired)", -0.02, ">=",
         "verdict", "test examples", load_paired_test, paired_difference),
    Part(2, "c", "worst test accuracy difference to the noise-free baseline during memorization",
         -0.05, ">=", "verdict", "evaluations (binomial)", load_phase, worst_phase_difference),
    Part(2, "d", "leak rate: held-out neighbours answered with their noisy neighbour's label", 0.05,
         "<=", "verdict", "clusters of neighbours", load_neighbours, leak_rate),
    Part(3, "a", "probe selectivity on noisy / on held-out clean examples, minimum over "
         "intermediates", 0.9, ">=", "verdict", "examples", load_probes("noisy"), probe_ratio),
    Part(3, "b", "as 3a with noisy examples teacher-forced on their true labels", 0.9, ">=",
         "diagnostic", "examples", load_probes("noisy_true_forced"), probe_ratio),
    Part(3, "c", "true answer's reciprocal rank on noisy / held-out clean examples, the point "
         "before the noisy label takes over", 0.9, ">=", "verdict", "examples", load_lens, lens_ratio),
    Part(4, "a", "noisy recall after a preserving minus after a changing patch at the "
         "intermediate's site", 0.1, ">=", "verdict", "examples", load_dependence("noisy"),
         specific_loss, reference_rule=True, reference_load=load_dependence("noisy", gated=False)),
    Part(4, "b", "the same on held-out clean examples (accuracy)", 0.1, ">=", "diagnostic",
         "examples", load_dependence("clean_heldout"), specific_loss),
    Part(4, "c", "input level: recall on the preserving minus the changing input", 0.1, ">=",
         "diagnostic", "examples", load_dependence("noisy"), input_specific_loss,
         reference_load=load_dependence("noisy", gated=False)),
    Part(4, "d", "INLP recall loss minus the mean of 20 same-rank random subspaces (where INLP "
         "removes the intermediate)", 0.1, ">=", "diagnostic", "examples", load_inlp, inlp_loss),
    Part(5, "a", "intermediate matters, inputs kept: 4a's statistic", 0.1, ">=", "verdict",
         "examples", load_dependence("noisy"), specific_loss, reference_rule=True,
         reference_load=load_dependence("noisy", gated=False)),
    Part(5, "b", "inputs matter, intermediate kept: recall lost on the preserving input", 0.5, ">=",
         # No reference rule: a look-up passes 5b by construction (it depends on its inputs); the
         # model that contradicts 5b is a memorizer keyed on the intermediate alone
         # (tests/test_claim_controls.py). The look-up is 5a's contradiction.
         "verdict", "examples", load_dependence("noisy"), preserving_input_loss,
         reference_load=load_dependence("noisy", gated=False)),
    Part(6, "a", "share of outlier neuron-positions that are heuristic neurons", 0.5, ">=",
         "verdict", "neurons", load_neurons, outlier_share),
    Part(6, "b", "enrichment: 6a minus the variance-matched heuristic share", 0.0, ">", "verdict",
         "neurons", load_neurons, enrichment),
    Part(6, "c", "outliers beyond the pre-memorization null: 1 - n_null / n_final", 0.5, ">=",
         "verdict", "neurons", load_null, beyond_null),
    Part(6, "d", "recall lost resetting the outliers minus resetting as many other heuristic "
         "neurons (held-out noisy half)", 0.1, ">=", "verdict", "examples", load_reset, reset_loss),
    Part(7, "a", "normalized circuit overlap (IoU - floor) / (ceiling - floor)", 0.5, ">=",
         "verdict", "examples", load_circuits, circuit_overlap),
    Part(7, "b", "cross-faithfulness: the clean circuit on noisy examples / the noisy circuit",
         0.8, ">=", "verdict", "examples", load_circuits, cross_faithfulness),
]
CLAIMS = sorted({p.claim for p in PARTS})


def parse_claims(only: str | None) -> list[int]:
    """``"1,3,7"`` to claim numbers (``None`` or empty: all); an unknown one names the valid ones.

    >>> parse_claims("7, 3"), parse_claims(None)
    ([3, 7], [1, 2, 3, 4, 5, 6, 7])
    """
    if not only or not only.strip():
        return list(CLAIMS)
    parts = [p.strip() for p in only.split(",") if p.strip()]
    bad = [p for p in parts if not p.isdigit() or int(p) not in CLAIMS]
    if bad:
        raise ConfigError(f"unknown claim {', '.join(map(repr, bad))}: the claims are "
                          f"{', '.join(map(str, CLAIMS))} (docs/claims.md)")
    return sorted({int(p) for p in parts})


def _controls(data: list[dict]) -> dict:
    keys = {k for d in data for k in d.get("controls", {})}
    return {k: round(float(np.nanmean([d["controls"][k] for d in data if k in d.get("controls", {})])), 4)
            for k in sorted(keys)}


def score_part(part: Part, runs: list[RunData], reference: RunData | None = None,
               n_boot: int = N_BOOT) -> dict:
    """One row of the scorecard: ``part`` over the seeds ``runs`` (one task)."""
    row: dict[str, Any] = {
        "claim": part.claim, "part": part.part, "role": part.role, "statistic": part.statistic,
        "threshold": part.threshold, "direction": part.direction, "units": part.units,
        "per_seed": [], "mean": None, "ci95": None, "n_seeds": len(runs), "n_units": [],
        "control": {}, "reference": None,
    }
    data, missing, unpaired = [], [], []
    for run in runs:
        try:
            data.append(part.load(run))
        except Unpaired:
            unpaired.append(run.path.name)
        except NotMeasured as why:
            missing.append(f"{run.path.name}: {why}")
    row["n_seeds"] = len(runs) - len(unpaired)
    if unpaired:
        row["unpaired"] = unpaired  # seeds without a noise-free baseline, left out
    if reference is not None and part.reference_load is not None:
        try:
            row["reference"] = round(part.value(part.reference_load(reference), None), 4)
        except NotMeasured as why:
            row["reference_note"] = str(why)
    if missing or not data:
        row.update(verdict="not measured", why="; ".join(missing) or (
            "no seed has a noise-free baseline" if unpaired else "no runs"))
        return row
    boot = hierarchical_bootstrap(data, part.value, n_boot=n_boot)
    row.update(per_seed=[round(v, 4) for v in boot["per_seed"]], mean=round(boot["point"], 4),
               ci95=[round(v, 4) for v in boot["ci95"]], n_units=[d.get("n") for d in data],
               control=_controls(data))
    extra = [d.get("not_computed") for d in data if d.get("not_computed")]
    if extra:
        row["not_computed"] = sorted({label for labels in extra for label in labels})
    result = verdict(boot["ci95"], part.threshold, part.direction)
    lo, hi = row["ci95"]
    why = f"95% interval [{lo:.3f}, {hi:.3f}] against {part.direction} {part.threshold}"
    if unpaired:
        why += f"; left out, no noise-free baseline: {', '.join(unpaired)}"
    if (result == "holds" and part.reference_rule and row["reference"] is not None
            and passes(row["reference"], part.threshold, part.direction)):
        result = "inconclusive"
        why += f"; the pure-memorizer reference passes too ({row['reference']:.3f})"
    row.update(verdict=result, why=why)
    return row


def score(runs: dict[str, list[Path]], references: dict[str, Path] | None = None,
          only: list[int] | None = None, n_boot: int = N_BOOT) -> list[dict]:
    """Every applicable part for every task: ``runs`` maps a task to its seeds' run directories,
    ``references`` a task to its pure-memorizer reference run."""
    rows = []
    for part in PARTS:
        if only is not None and part.claim not in only:
            continue
        for task, dirs in runs.items():
            seeds = [RunData(Path(d)) for d in dirs]
            if seeds and part.claim not in seeds[0].task.claims:
                continue  # e.g. claim 6 needs arithmetic heuristics
            ref = RunData(Path(references[task])) if references and task in references else None
            rows.append({"task": task, **score_part(part, seeds, ref, n_boot)})
    return rows


def claim_verdicts(rows: list[dict]) -> list[dict]:
    """One verdict per (claim, task) from its verdict parts (docs/claims.md)."""
    out = []
    keys = sorted({(r["claim"], r["task"]) for r in rows})
    for claim, task in keys:
        parts = [r for r in rows if r["claim"] == claim and r["task"] == task and r["role"] == "verdict"]
        verdicts = [r["verdict"] for r in parts]
        if verdicts and all(v == "holds" for v in verdicts):
            result = "holds"
        elif "does not hold" in verdicts:
            result = "does not hold"
        elif "not measured" in verdicts:
            result = "not measured"
        else:
            result = "inconclusive"
        out.append({"claim": claim, "task": task, "verdict": result,
                    "parts": {f"{r['claim']}{r['part']}": r["verdict"] for r in parts}})
    return out


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def to_markdown(rows: list[dict]) -> str:
    """The scorecard as markdown: verdicts per claim, then every part with its interval,
    controls and the pure-memorizer reference, then the reasons."""
    lines = ["| claim | task | verdict | parts |", "|---|---|---|---|"]
    for v in claim_verdicts(rows):
        parts = ", ".join(f"{k}: {p}" for k, p in v["parts"].items())
        lines.append(f"| {v['claim']} | {v['task']} | **{v['verdict']}** | {parts} |")
    lines += ["", "| part | task | role | statistic | per seed | mean | 95% CI | threshold | control | "
              "pure memorizer | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "n/a" if not r["ci95"] else f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        per = ", ".join(f"{v:.3f}" for v in r["per_seed"]) or "n/a"
        control = "; ".join(f"{k} {v:.3f}" for k, v in r["control"].items()) or "-"
        lines.append(f"| {r['claim']}{r['part']} | {r['task']} | {r['role']} | {r['statistic']} | {per} | "
                     f"{_fmt(r['mean'])} | {ci} | {r['direction']} {r['threshold']} | {control} | "
                     f"{_fmt(r['reference'])} | **{r['verdict']}** |")
    lines.append("")
    lines += [f"- {r['claim']}{r['part']} ({r['task']}): {r['why']}" for r in rows]
    return "\n".join(lines) + "\n"


def role_of(config: dict) -> str:
    """``baseline`` (noise rate 0), ``reference`` (noise rate 1: every label random) or ``run``,
    from a run's stored task config."""
    rate = config.get("noise_rate")
    return "baseline" if rate == 0 else "reference" if rate == 1 else "run"


def group_run_dirs(run_dirs: list[Path]) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    from memlens.training.run import read_header

    """Run directories by task, and each task's pure-memorizer reference (the run whose noise
    rate is 1); noise-free baselines are left out (they enter through ``behaviour``)."""
    runs: dict[str, list[Path]] = {}
    references: dict[str, Path] = {}
    for run_dir in run_dirs:
        stored = read_header(run_dir)["run"]
        role = role_of(stored["task_config"])
        if role == "reference":
            references.setdefault(stored["task"], Path(run_dir))
        elif role == "run":
            runs.setdefault(stored["task"], []).append(Path(run_dir))
    return runs, references


def score_run_dirs(run_dirs: list[Path], only: list[int] | None = None) -> list[dict]:
    """The claims scorecard over run directories (seeds of a task together; a reference run
    among them is used as that task's pure-memorizer reference)."""
    runs, references = group_run_dirs(run_dirs)
    return score(runs, references, only=only)


__all__ = ["PARTS", "Part", "RunData", "claim_verdicts", "group_run_dirs", "parse_claims", "role_of",
           "score", "score_part", "score_run_dirs", "to_markdown"]
