"""Interventions resumed at the site's layer versus the whole model run under each intervention.

    .venv/bin/python benchmarks/interventions.py --run RUN_DIR [--repeats 3]

Runs claim 4d's intervention analysis (INLP until removed, 20 random subspaces, a shuffled INLP,
mean ablation) for the run's first claim-4 intermediate at its patching site, as `memlens
analyze` does, alternating ``resume=True`` (each intervened pass starts at the site's layer on
the positions from the site on) with ``resume=False`` (the whole model with the hook) in one
process. The two must give the same table. Writes docs/benchmarks/interventions.md and .json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TABLE_HEADER, command_line, compare, write_doc, write_json  # noqa: E402

from memlens import load_run  # noqa: E402
from memlens.analysis.interventions import intervene  # noqa: E402
from memlens.analysis.runner import clean_splits, group, load_analysis  # noqa: E402


def main() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="an analyzed run directory (patching.json present)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run = load_run(args.run)
    name, column = run.task.entries(claim=4)[0]
    label = run.task.intermediate(name).label(column)
    site = load_analysis(run.path, "patching")["summary"][label]["site"]
    fit = clean_splits(run, {"fit": 2000})["fit"]
    groups = {k: group(run, k, 1000) for k, v in run.splits.items() if len(v)}

    def analysis(resume: bool):
        return lambda: intervene(run.model, groups, fit, name, column=column, layer=site["layer"],
                                 position=site["position"], seed=run.config.seed, resume=resume).to_frame()

    comparison, ours, theirs = compare(f"claim-4d interventions, {label} ({run.path.name})",
                                       analysis(True), analysis(False), repeats=args.repeats)
    same = ours.equals(theirs)
    ratio = statistics.median(comparison.ratios)
    record = {"command": command_line(), "machine": platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "run": str(run.path), "intermediate": label,
              "site": site, "groups": {k: len(v) for k, v in groups.items()},
              "memlens_seconds": comparison.memlens_seconds, "baseline_seconds": comparison.baseline_seconds,
              "identical_tables": same,
              "headline": [{"benchmark": comparison.name, "figure": "speed-up vs the whole model per intervention",
                            "value": round(ratio, 2), "goal": ""}]}
    write_json("interventions.json", record)
    doc = write_doc("interventions.md", "\n".join([
        "# Interventions: resumed at the site vs whole runs", "",
        f"Command: `{command_line()}` ({platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)). Site: layer {site['layer']}, position {site['position']}; "
        f"groups {record['groups']}.", "", TABLE_HEADER, comparison.row(), "",
        f"Identical tables (every intervention, every group): {same}.", ""]))
    print(f"{comparison.name}: {ratio:.2f}x, identical {same}; wrote {doc}")
    if not same:
        raise SystemExit("the resumed and whole-model tables differ")


if __name__ == "__main__":
    main()
