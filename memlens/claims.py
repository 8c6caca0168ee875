"""The claims scorecard: each claim of PAPER.md as a measured, pass/fail statistic.

Each claim gets one statistic per run (task x seed), computed from the run's summary and its
analysis JSON files. Across seeds: mean and a 95% t-interval. Verdict: ``holds`` when every
seed's statistic passes the threshold, ``does not hold`` when any seed fails, ``not measured``
when a seed lacks the data (the analysis is missing, or the run does not reach the stage the
claim is about). Thresholds and their reasons are in docs/claims.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from memlens.analysis.common import AnalysisError
from memlens.analysis.registry import load_analysis
from memlens.config import ConfigError

T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


class NotMeasured(Exception):
    """The data a claim needs is not there; the message says why."""


@dataclass(frozen=True)
class Claim:
    number: int
    statistic: str
    threshold: float
    direction: str  # ">=" or ">"
    why: str

    def passes(self, value: float) -> bool:
        return value > self.threshold if self.direction == ">" else value >= self.threshold


CLAIMS = {
    1: Claim(1, "steps from test accuracy 0.9 to noisy memorization 0.5", 0.0, ">",
             "generalization (test >= 0.9) comes strictly before memorization (noisy recall >= 0.5)"),
    2: Claim(2, "min(final noisy memorization, final test accuracy)", 0.9, ">=",
             "noisy labels are recalled and held-out accuracy stays high at the end"),
    3: Claim(3, "probe accuracy on noisy / on held-out clean examples (best clean site)", 0.9, ">=",
             "intermediate results are read from memorized examples about as well as from clean ones"),
    4: Claim(4, "noisy recall drop under INLP minus under a random subspace of the same rank", 0.05, ">=",
             "removing the intermediate hurts recall of noisy labels beyond a same-rank control"),
    5: Claim(5, "normalized entropy of input attributions on noisy examples", 0.5, ">=",
             "recall of a noisy label depends on many inputs (a lookup from one input gives 0)"),
    6: Claim(6, "share of late-layer outlier neurons that are heuristic neurons", 0.5, ">=",
             "memorization shifts existing heuristic neurons rather than adding new ones"),
    7: Claim(7, "circuit overlap (IoU) clean vs noisy minus random baseline", 0.2, ">=",
             "the circuits for generalization and memorization overlap strongly"),
}


def _analysis(run_dir: Path, name: str) -> dict:
    try:
        return load_analysis(run_dir, name)
    except AnalysisError as err:
        raise NotMeasured(str(err)) from None


def _finished(summary: dict) -> dict:
    if "phases" not in summary or "final_metrics" not in summary:
        raise NotMeasured("the run has not finished training")
    return summary


# Claims 3-7 are about a model that memorized the noise on top of a solution that generalizes:
# on a model that did neither (the tiny preset) their statistics exist but mean nothing.
GENERALIZED, MEMORIZED = 0.9, 0.5


def _memorized_while_reasoning(summary: dict) -> None:
    final = _finished(summary)["final_metrics"]
    if final["test_acc"] < GENERALIZED:
        raise NotMeasured(f"the model did not generalize (final test accuracy {final['test_acc']:.3f} "
                          f"< {GENERALIZED})")
    if final["noisy_memorized_acc"] < MEMORIZED:
        raise NotMeasured(f"the model did not memorize the noise (final noisy recall "
                          f"{final['noisy_memorized_acc']:.3f} < {MEMORIZED})")


def claim1(run_dir: Path, summary: dict) -> float:
    phases = _finished(summary)["phases"]
    test, mem = phases.get("step_test_acc_0.9"), phases.get("step_noisy_memorized_0.5")
    if test is None:
        raise NotMeasured("test accuracy never reached 0.9")
    if mem is None:
        raise NotMeasured("noisy memorization never reached 0.5")
    return float(mem - test)


def claim2(run_dir: Path, summary: dict) -> float:
    final = _finished(summary)["final_metrics"]
    return float(min(final["noisy_memorized_acc"], final["test_acc"]))


def claim3(run_dir: Path, summary: dict) -> float:
    _memorized_while_reasoning(summary)
    best = _analysis(run_dir, "probes")["summary"]["best"]
    ratios = []
    for row in best:
        if row["variable"] not in ("column_sum", "carry", "bridge_entity"):
            continue
        clean, noisy, majority = row.get("clean_heldout_acc"), row.get("noisy_acc"), row.get("clean_heldout_majority")
        if clean is None or noisy is None or majority is None or majority >= 0.99:
            continue  # a constant target (e.g. the carry into the units column) says nothing
        ratios.append(noisy / max(clean, 1e-9))
    if not ratios:
        raise NotMeasured("no probed intermediate with noisy examples")
    return float(np.mean(ratios))


def claim4(run_dir: Path, summary: dict) -> float:
    _memorized_while_reasoning(summary)
    items = _analysis(run_dir, "interventions")["summary"]
    diffs = []
    for item in items.values():
        table = {row["intervention"]: row for row in item["table"]}
        base = table["none"].get("noisy_memorized_acc")
        if base is None or base != base:
            continue
        drop_inlp = base - table["inlp"]["noisy_memorized_acc"]
        drop_random = base - table["random_subspace"]["noisy_memorized_acc"]
        diffs.append(drop_inlp - drop_random)
    if not diffs:
        raise NotMeasured("no intervention measured noisy recall")
    return float(np.mean(diffs))


def claim5(run_dir: Path, summary: dict) -> float:
    _memorized_while_reasoning(summary)
    enc = _analysis(run_dir, "encoding")["summary"]
    if "noisy" not in enc:
        raise NotMeasured("no noisy examples in the encoding analysis")
    return float(enc["noisy"]["mean_entropy"])


def claim6(run_dir: Path, summary: dict) -> float:
    _memorized_while_reasoning(summary)
    outliers = _analysis(run_dir, "neurons")["summary"]["outliers"]
    if not outliers.get("n_outliers"):
        raise NotMeasured("no last-layer neuron is an outlier on noisy examples")
    return float(outliers["share_heuristic"])


def claim7(run_dir: Path, summary: dict) -> float:
    _memorized_while_reasoning(summary)
    return float(_analysis(run_dir, "circuits")["summary"]["overlap"]["iou_minus_random"])


STATISTICS: dict[int, Callable[[Path, dict], float]] = {
    1: claim1, 2: claim2, 3: claim3, 4: claim4, 5: claim5, 6: claim6, 7: claim7,
}


def parse_claims(only: str | None) -> list[int]:
    """``"1,3,7"`` to claim numbers (``None`` or empty: all); an unknown one names the valid ones.

    >>> parse_claims("7, 3"), parse_claims(None)
    ([3, 7], [1, 2, 3, 4, 5, 6, 7])
    """
    if not only or not only.strip():
        return sorted(CLAIMS)
    parts = [p.strip() for p in only.split(",") if p.strip()]
    bad = [p for p in parts if not p.isdigit() or int(p) not in CLAIMS]
    if bad:
        raise ConfigError(f"unknown claim {', '.join(map(repr, bad))}: the claims are "
                          f"{', '.join(map(str, sorted(CLAIMS)))} (numbered as in PAPER.md)")
    return sorted({int(p) for p in parts})


def ci95(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [float("nan"), float("nan")]
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    half = T_95.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))
    return [mean - half, mean + half]


def score(runs: dict[str, list[Path]], summaries: dict[Path, dict]) -> list[dict]:
    """One row per claim and task: per-seed statistic, mean, CI, threshold, verdict, why."""
    rows = []
    for number, claim in CLAIMS.items():
        for task, dirs in runs.items():
            values, missing = [], []
            for run_dir in dirs:
                try:
                    values.append(STATISTICS[number](run_dir, summaries[run_dir]))
                except NotMeasured as why:
                    missing.append(f"{run_dir.name}: {why}")
            if number == 6 and task != "fda":
                continue  # the heuristic-neuron claim is about arithmetic (FDA) only
            if missing or not values:
                verdict, why = "not measured", "; ".join(missing) or "no runs"
            elif all(claim.passes(v) for v in values):
                verdict, why = "holds", f"every seed {claim.direction} {claim.threshold}: {claim.why}"
            else:
                failing = sum(not claim.passes(v) for v in values)
                verdict, why = "does not hold", f"{failing} of {len(values)} seeds miss {claim.direction} {claim.threshold}"
            rows.append({
                "claim": number, "task": task, "statistic": claim.statistic,
                "per_seed": [round(v, 4) for v in values],
                "mean": round(float(np.mean(values)), 4) if values else None,
                "ci95": [round(x, 4) for x in ci95(values)] if len(values) > 1 else None,
                "threshold": claim.threshold, "verdict": verdict, "why": why,
            })
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["| claim | task | statistic | per seed | mean | 95% CI | threshold | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "n/a" if not r["ci95"] else f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        mean = "n/a" if r["mean"] is None else f"{r['mean']:.3f}"
        per = ", ".join(f"{v:.3f}" for v in r["per_seed"]) or "n/a"
        lines.append(f"| {r['claim']} | {r['task']} | {r['statistic']} | {per} | {mean} | {ci} | "
                     f"{r['threshold']} | **{r['verdict']}** |")
    lines.append("")
    lines += [f"- claim {r['claim']} ({r['task']}): {r['why']}" for r in rows]
    return "\n".join(lines) + "\n"


__all__ = ["CLAIMS", "Claim", "score", "to_markdown"]
