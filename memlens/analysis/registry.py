"""Run-level analyses for ``memlens analyze``: each name maps a loaded run to a Result.

The defaults here (subset sizes, probed variables) are what ``memlens analyze`` and
``memlens reproduce`` use; the analysis functions themselves take any examples.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

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


def run_probes(run) -> Result:
    from memlens.analysis.probes import fit_probes

    fit, groups = probe_groups(run)
    variables = [v for v in PROBE_VARIABLES[run.config.task] if v in fit.intermediates]
    return fit_probes(run.model, fit, groups, variables, seed=run.config.seed)


ANALYSES: dict[str, Callable] = {
    "logit_lens": run_logit_lens,
    "probes": run_probes,
}


def parse_only(only: str | None) -> list[str]:
    """``"a,b"`` to a list of known analysis names; an unknown name lists the valid ones."""
    if not only:
        return list(ANALYSES)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise AnalysisError(f"unknown analysis {unknown}; valid names: {sorted(ANALYSES)}")
    return names


def analyze_run(run_dir: str | Path, only: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Run the named analyses on a run directory; writes ``RUN/analysis/<name>.json`` each."""
    from memlens.training.run import load_run

    names = parse_only(only)
    run = load_run(run_dir)
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
