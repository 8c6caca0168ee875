"""Write a results page (markdown) from a `memlens reproduce` output directory.

    .venv/bin/python scripts/results_doc.py runs/reproduce-small docs/results/reproduce-small.md [RUN ...]

The page holds the command and wall time (reproduce.json, when the call finished), each run's
training time and phase steps (summary.json), the claims scorecard computed from the runs
(all finished runs in the directory, or the RUN directories given), and the neuron and circuit
figures of each run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from memlens.claims import to_markdown
from memlens.io import atomic_write_text
from memlens.reproduce import score_run_dirs


def run_rows(runs: list[Path]) -> list[str]:
    lines = ["| run | training wall s | steps/s | evaluation share | test >= 0.9 at | noisy mem. >= 0.5 at | "
             ">= 0.9 at | final test | final clean | final noisy memorized | final noisy true |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        s = json.loads((run / "summary.json").read_text())
        p, f = s["phases"], s["final_metrics"]
        share = s.get("eval_seconds", 0) / max(s["wall_seconds"], 1e-9)
        lines.append(
            f"| {run.name} | {s['wall_seconds']:.0f} | {s['steps_per_second']:.1f} | {share:.1%} | "
            f"{p.get('step_test_acc_0.9')} | {p.get('step_noisy_memorized_0.5')} | "
            f"{p.get('step_noisy_memorized_0.9')} | {f['test_acc']:.4f} | {f['train_clean_acc']:.4f} | "
            f"{f['noisy_memorized_acc']:.4f} | {f['noisy_true_acc']:.4f} |")
    return lines


def analysis_rows(runs: list[Path]) -> list[str]:
    lines = ["| run | heuristic neuron-positions | outlier neurons | of them heuristic | noisy recall: none / "
             "outliers set back / random / clean-important | clean acc. with outliers set back | "
             "circuit IoU (top-k) / random | weighted Jaccard | faithfulness clean / noisy at 10, 25, 50, 75% of edges |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        try:
            n = json.loads((run / "analysis" / "neurons.json").read_text())["summary"]
            c = json.loads((run / "analysis" / "circuits.json").read_text())["summary"]
        except (OSError, json.JSONDecodeError):
            lines.append(f"| {run.name} | missing | | | | | | | |")
            continue
        o = n["outliers"]
        table = {r["variant"].split(" (")[0]: r for r in (n["patching"] or [])}
        recall = " / ".join(f"{table[v]['noisy_memorized_acc']:.3f}" for v in
                            ("none", "outlier neurons", "random neurons", "clean-important neurons") if v in table)
        clean_acc = f"{table['outlier neurons']['train_clean_acc']:.3f}" if "outlier neurons" in table else "n/a"
        share = "n/a" if o["share_heuristic"] is None else f"{o['n_outliers_heuristic']} ({o['share_heuristic']:.0%})"
        ov = c["overlap"]
        faith = " / ".join(", ".join(f"{v:.2f}" for v in c[g].get("faithfulness_by_share", {}).values())
                           for g in ("clean", "noisy"))
        lines.append(f"| {run.name} | {n['heuristics']['n_heuristic']} of {n['heuristics']['n_neurons']} | "
                     f"{o['n_outliers']} | {share} | {recall or 'n/a'} | {clean_acc} | "
                     f"{ov['iou']:.3f} (k={ov['k']} of {ov['n_edges']}) / {ov['random_iou']:.3f} | "
                     f"{ov['weighted_jaccard']:.3f} | {faith} |")
    return lines


def main(out_dir: str, doc: str, runs: list[str]) -> None:
    out = Path(out_dir)
    run_dirs = [Path(r) for r in runs] or sorted(p.parent for p in out.glob("*/summary.json"))
    record_path = out / "reproduce.json"
    lines = [f"# Reproduction results: {', '.join(r.name for r in run_dirs)}", ""]
    if record_path.exists():
        record = json.loads(record_path.read_text())
        lines += [f"Command: `memlens reproduce --preset {record['preset']} --seeds {record['seeds']} "
                  f"--jobs {record['jobs']} --out {out}`; wall time of that call "
                  f"{record['wall_seconds'] / 60:.1f} min (runs it found finished are reused).", ""]
    lines += ["## Training", "", *run_rows(run_dirs), "",
              "## Neurons and circuits", "", *analysis_rows(run_dirs), "",
              "## Claims scorecard", "", "Statistics, thresholds and reasons: docs/claims.md.", "",
              to_markdown(score_run_dirs(run_dirs))]
    atomic_write_text(doc, "\n".join(lines))
    print(f"wrote {doc}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
