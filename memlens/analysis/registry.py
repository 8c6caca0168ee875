"""Run-level analyses for ``memlens analyze``: each name maps a loaded run to a Result.

The defaults here (subset sizes, probed variables) are what ``memlens analyze`` and
``memlens reproduce`` use; the analysis functions themselves take any examples.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from memlens.analysis.common import AnalysisError, Result, to_jsonable
from memlens.io import atomic_write_json
from memlens.tasks.base import Examples

ANALYSIS_DIR = "analysis"
PROBE_VARIABLES = {
    "fda": ("column_sum", "carry", "answer_digit", "partial_sum"),
    "thr": ("bridge_entity", "answer_entity"),
}


def subset(examples: Examples, n: int, seed: int) -> Examples:
    """A fixed seeded subset of at most ``n`` examples (all of a smaller batch)."""
    if len(examples) <= n:
        return examples
    gen = torch.Generator().manual_seed(seed)
    return examples[torch.randperm(len(examples), generator=gen)[:n].sort().values]


def answer_columns(task) -> list[int]:
    layout = getattr(task, "layout", None)
    if layout is None:
        return []
    return [layout.answer_column(i) for i in range(task.config.answer_width)]


def run_logit_lens(run, max_examples: int = 2000) -> Result:
    from memlens.analysis.logit_lens import logit_lens

    groups = {k: subset(v, max_examples, run.config.seed) for k, v in run.splits.items() if len(v)}
    return logit_lens(run.model, groups, answer_columns=answer_columns(run.task))


def probe_groups(run, n_fit: int = 4000, n_eval: int = 1000) -> tuple[Examples, dict[str, Examples]]:
    """Disjoint fit and held-out subsets of the clean training examples, plus test and noisy."""
    clean = run.splits["train_clean"]
    gen = torch.Generator().manual_seed(run.config.seed)
    order = torch.randperm(len(clean), generator=gen)
    n_fit = min(n_fit, int(0.8 * len(clean)))
    fit = clean[order[:n_fit].sort().values]
    heldout = clean[order[n_fit:n_fit + n_eval].sort().values]
    groups = {"clean_heldout": heldout, "test": subset(run.splits["test"], n_eval, run.config.seed),
              "noisy": subset(run.splits["train_noisy"], 2 * n_eval, run.config.seed)}
    return fit, {k: v for k, v in groups.items() if len(v)}


def site_limits(run, fit: Examples, variables: list[str]) -> dict[str, int]:
    """Last position eligible as a target's best probe site: before the answer token that shows
    it (FDA: the position predicting the target's column; THR: the last prompt position)."""
    from memlens.analysis.probes import probe_targets

    limits = {}
    for variable in variables:
        for target in probe_targets(fit, variable):
            if run.config.task == "thr":
                limits[target.label] = int(fit.answer_pos[0])
            elif target.column is not None and variable != "partial_sum":
                column = min(target.column, run.task.config.answer_width - 1)
                limits[target.label] = run.task.layout.predicting_pos(column)
            else:
                limits[target.label] = run.task.layout.eq_pos
    return limits


def run_probes(run) -> Result:
    from memlens.analysis.probes import fit_probes

    fit, groups = probe_groups(run)
    variables = [v for v in PROBE_VARIABLES[run.config.task] if v in fit.intermediates]
    return fit_probes(run.model, fit, groups, variables, seed=run.config.seed,
                      site_limits=site_limits(run, fit, variables))


@dataclass
class ResultSet(Result):
    """Several results of one analysis (e.g. one per variable and column), framed together."""

    items: dict[str, Result]
    name: str = "results"

    def to_frame(self) -> pd.DataFrame:
        frames = [r.to_frame().assign(item=key) for key, r in self.items.items()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def summary(self) -> dict:
        return {key: r.summary() for key, r in self.items.items()}

    def figure(self, item: str | None = None):
        return self.items[item or next(iter(self.items))].figure()


def mixed_examples(run, n_clean: int = 400, n_noisy: int = 400, two_hop: bool = True) -> Examples:
    """Clean training examples and noisy ones together (seeded subsets); THR: two-hop only."""
    clean, noisy = run.splits["train_clean"], run.splits["train_noisy"]
    if two_hop and "n_hops" in clean.intermediates:
        clean = clean[clean.intermediates["n_hops"] == 2]
    parts = [subset(clean, n_clean, run.config.seed)]
    if len(noisy):
        parts.append(subset(noisy, n_noisy, run.config.seed))
    return Examples.concat(parts)


def intermediate_columns(run) -> list[tuple[str, int | None]]:
    """(variable, column) pairs that ``patch_intermediate`` and the interventions sweep over."""
    if run.config.task == "thr":
        return [("bridge_entity", None)]
    n_digits = run.config.task_config["n_digits"]
    pairs = [("column_sum", c) for c in range(n_digits)] + [("carry", c) for c in range(1, n_digits + 1)]
    if run.config.task_config["n_operands"] > 2:
        pairs += [("partial_sum", j) for j in range(run.config.task_config["n_operands"] - 2)]
    return pairs


def _key(variable: str, column: int | None) -> str:
    return variable if column is None else f"{variable}[{column}]"


def run_patching(run) -> Result:
    from memlens.analysis.intermediate_patching import patch_intermediate

    examples = mixed_examples(run)
    items = {_key(v, c): patch_intermediate(run.model, examples, v, column=c, seed=run.config.seed)
             for v, c in intermediate_columns(run)}
    return ResultSet(items=items, name="patching")


def intervention_site(run, variable: str, column: int | None) -> tuple[int, int]:
    """Where an intermediate is removed: the middle layer's input, at the position that predicts
    the answer digit of the column (FDA) or at the first relation, where the bridge forms (THR)."""
    layer = run.model.cfg.n_layers // 2
    if run.config.task == "thr":
        return layer, 2
    column = column if variable != "carry" else column - 1
    return layer, run.task.layout.predicting_pos(min(column, run.task.config.answer_width - 1))


def run_interventions(run) -> Result:
    from memlens.analysis.interventions import intervene

    fit, _ = probe_groups(run, n_fit=2000)
    groups = {k: subset(v, 1000, run.config.seed) for k, v in run.splits.items() if len(v)}
    items = {}
    for variable, column in intermediate_columns(run):
        if variable not in ("column_sum", "bridge_entity"):
            continue
        layer, position = intervention_site(run, variable, column)
        res = intervene(run.model, groups, fit, variable, column=column, layer=layer,
                        position=position, seed=run.config.seed)
        items[_key(variable, column)] = res
    return ResultSet(items=items, name="interventions")


def run_encoding(run) -> Result:
    from memlens.analysis.encoding import encoding

    return encoding(run.model, mixed_examples(run, 500, 500), seed=run.config.seed)


def neuron_examples(run, n: int = 10_000) -> Examples:
    """Examples for the neuron analyses: every noisy training example and clean ones up to
    ``n`` in all (THR: two-hop queries only, the ones that carry noise)."""
    train = run.dataset.train
    if "n_hops" in train.intermediates:
        train = train[train.intermediates["n_hops"] == 2]
    noisy = train[train.is_noisy]
    clean = subset(train[~train.is_noisy], max(0, n - len(noisy)), run.config.seed)
    return Examples.concat([clean, noisy]) if len(noisy) else clean


@dataclass
class NeuronAnalysis(Result):
    """Heuristic classes and noisy-example outliers of the last layer's neurons, and the effect
    of setting the outliers back to their clean predictions."""

    outliers: Result
    patching: Result | None
    name = "neurons"

    def to_frame(self) -> pd.DataFrame:
        return self.outliers.to_frame()

    def summary(self) -> dict:
        heur = self.outliers.heuristics
        return {"layers": heur.layers, "positions": heur.positions, "heuristics": heur.summary(),
                "outliers": self.outliers.summary(),
                "patching": None if self.patching is None else self.patching.summary()["table"]}

    def figure(self):
        return self.outliers.figure()


def run_neurons(run) -> Result:
    from memlens.analysis.heuristics import classify_neurons, score_outliers
    from memlens.analysis.neuron_patching import neuron_patching
    from memlens.analysis.neurons import neuron_table

    examples = neuron_examples(run)
    table = neuron_table(run.model, examples, layers=[run.model.cfg.n_layers - 1])
    heuristics = classify_neurons(table, examples, seed=run.config.seed)
    outliers = score_outliers(table, examples, heuristics)
    patching = (neuron_patching(run.model, examples, table, outliers, seed=run.config.seed)
                if outliers.outliers.any() else None)
    return NeuronAnalysis(outliers=outliers, patching=patching)


@dataclass
class CircuitAnalysis(Result):
    """EAP circuits for clean and for noisy examples, their overlap and faithfulness."""

    clean: Result
    noisy: Result
    summary_: dict
    name = "circuits"

    def to_frame(self) -> pd.DataFrame:
        return pd.concat([self.clean.to_frame().assign(group="clean"),
                          self.noisy.to_frame().assign(group="noisy")], ignore_index=True)

    def summary(self) -> dict:
        return self.summary_

    def figure(self):
        return self.clean.figure()


def run_circuits(run, n: int = 400) -> Result:
    """Circuits of the clean and of the noisy training examples, the top 10% of edges each.

    Corruption: another example's input from the same group. Metric: the logit of each
    example's trained label minus the logit of the corrupting example's label, averaged over
    answer slots and examples. (Log-probabilities saturate near 0 on memorized examples, so
    their gradients, and with them the attribution scores, vanish.)"""
    from memlens.analysis.circuits import edge_attribution, faithfulness, overlap

    def group(name: str):
        ex = run.splits[name]
        if "n_hops" in ex.intermediates:
            ex = ex[ex.intermediates["n_hops"] == 2]
        ex = subset(ex, n, run.config.seed)
        corrupt = ex.tokens.roll(1, 0)  # another example of the same group

        def metric(logits):
            at = logits[:, ex.answer_pos].float()
            own = at.gather(-1, ex.labels.to(at.device)[..., None])
            other = at.gather(-1, ex.labels.roll(1, 0).to(at.device)[..., None])
            return (own - other).mean()
        return ex, corrupt, metric

    if not len(run.splits["train_noisy"]):
        raise AnalysisError("circuits compare clean and noisy examples: this run has no noisy ones")
    groups = {"clean": group("train_clean"), "noisy": group("train_noisy")}
    results, summary = {}, {}
    for name, (ex, corrupt, metric) in groups.items():
        results[name] = edge_attribution(run.model, ex.tokens, corrupt, metric)
        summary[name] = {"n": len(ex), "metric_clean": results[name].metric_clean,
                         "metric_corrupt": results[name].metric_corrupt}
    n_edges = int(results["clean"].graph.edges.sum())
    k = max(5, round(0.1 * n_edges))
    summary["overlap"] = overlap(results["clean"], results["noisy"], k, seed=run.config.seed)
    for name, (ex, corrupt, metric) in groups.items():
        summary[name]["faithfulness"] = faithfulness(run.model, ex.tokens, corrupt, results[name].top(k), metric)
        # A top-k set need not connect the embedding to the logits: how much larger circuits recover.
        summary[name]["faithfulness_by_share"] = {
            str(share): faithfulness(run.model, ex.tokens, corrupt,
                                     results[name].top(max(1, round(share * n_edges))), metric)
            for share in (0.1, 0.25, 0.5, 0.75)}
        summary[name]["top_edges"] = results[name].to_frame().head(k).to_dict(orient="records")
        summary[name]["top_components"] = results[name].node_scores().head(10).round(6).to_dict()
    return CircuitAnalysis(results["clean"], results["noisy"], summary)


ANALYSES: dict[str, Callable] = {
    "logit_lens": run_logit_lens,
    "probes": run_probes,
    "patching": run_patching,
    "interventions": run_interventions,
    "encoding": run_encoding,
    "neurons": run_neurons,
    "circuits": run_circuits,
}


def parse_only(only: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` to a list of known analysis names (``None``: all); an
    unknown name lists the valid ones.

    >>> parse_only("probes, logit_lens"), parse_only(["circuits"])
    (['probes', 'logit_lens'], ['circuits'])
    """
    if not only:
        return list(ANALYSES)
    parts = only.split(",") if isinstance(only, str) else list(only)
    names = [n.strip() for n in parts if isinstance(n, str) and n.strip()]
    if len(names) != len(parts) and not isinstance(only, str):
        raise AnalysisError(f"only must name analyses as strings, got {only!r}")
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise AnalysisError(f"unknown analysis {unknown}; valid names: {sorted(ANALYSES)}")
    return names


def analyze_run(run_dir: str | Path, only: str | list[str] | None = None,
                log: Callable[[str], None] = print, device: str = "auto") -> dict:
    """Run the named analyses (``only``: ``"a,b"`` or a list; default all) on a run directory;
    writes ``RUN/analysis/<name>.json`` each.

    ``device``: where the model runs (``auto``: CUDA when present).
    """
    from memlens.training.run import load_run
    from memlens.training.trainer import resolve_device

    names = parse_only(only)
    run = load_run(run_dir, device=resolve_device(device))
    out_dir = Path(run_dir) / ANALYSIS_DIR
    written = {}
    for name in names:
        start = time.perf_counter()
        result = ANALYSES[name](run)
        data = result.to_json()
        data["seconds"] = round(time.perf_counter() - start, 2)
        data["run"] = str(run_dir)
        atomic_write_json(out_dir / f"{name}.json", to_jsonable(data))
        written[name] = out_dir / f"{name}.json"
        log(f"{name}: {data['seconds']} s -> {written[name]}")
    return written


def load_analysis(run_dir: str | Path, name: str) -> dict:
    """Read ``RUN/analysis/<name>.json``; a missing or corrupted file says how to produce it."""
    path = Path(run_dir) / ANALYSIS_DIR / f"{name}.json"
    if not path.exists():
        raise AnalysisError(f"{path} is missing: run `memlens analyze {run_dir} --only {name}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AnalysisError(f"{path} is corrupted ({err}): rerun `memlens analyze {run_dir} "
                            f"--only {name}`") from None
