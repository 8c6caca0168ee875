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

from memlens.claims import score_run_dirs, to_markdown
from memlens.io import atomic_write_text


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
    """Per run: claim 6's neuron study and claim 7's circuits, from analysis/*.json (a run
    without them, e.g. THR for neurons or a reference, reads "n/a")."""
    lines = ["| run | heuristic neuron-positions | outliers | of them heuristic | noisy recall: none / "
             "outliers reset / other heuristic reset / random reset | clean acc. with outliers reset | "
             "circuit IoU / floor / ceiling | cross-faithfulness | EAP-IG vs exact r (EAP) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        cells = [run.name]
        try:
            n = json.loads((run / "analysis" / "neurons.json").read_text())["summary"]
        except (OSError, json.JSONDecodeError):
            cells += ["n/a"] * 5
        else:
            o = n["outliers"]
            table = {r["variant"]: r for r in ((n.get("patching") or {}).get("table") or [])}
            recall = " / ".join(f"{table[v]['noisy_memorized_acc']:.3f}" for v in
                                ("none", "outlier neurons", "other heuristic neurons", "random neurons")
                                if v in table)
            share = "n/a" if o["share_heuristic"] is None else f"{o['n_outliers_heuristic']} ({o['share_heuristic']:.0%})"
            clean = table.get("outlier neurons", {}).get("train_clean_acc")
            cells += [f"{n['heuristics']['n_heuristic']} of {n['heuristics']['n_neurons']}", str(o["n_outliers"]),
                      share, recall or "n/a", "n/a" if clean is None else f"{clean:.3f}"]
        try:
            c = json.loads((run / "analysis" / "circuits.json").read_text())["summary"]
        except (OSError, json.JSONDecodeError):
            cells += ["n/a"] * 3
        else:
            ov, cf, r = c["overlap"], c["cross_faithfulness"], c["correlation"]
            cells += [f"{ov['iou']:.3f} / {ov['floor']:.3f} / {ov['ceiling']:.3f}", f"{cf['value']:.3f}",
                      f"{r['eap-ig']['mean']:.2f} ({r['eap']['mean']:.2f})"]
        lines.append("| " + " | ".join(cells) + " |")
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
