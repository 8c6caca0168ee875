"""Write a results page (markdown) from a `memlens reproduce` output directory.

    .venv/bin/python scripts/results_doc.py runs/reproduce-small docs/results/reproduce-small.md

The page holds the command and wall time (reproduce.json), each run's training time and phase
steps (summary.json), and the claims scorecard (claims.json), so the committed results say how
they were made.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from memlens.claims import to_markdown
from memlens.io import atomic_write_text


def main(out_dir: str, doc: str) -> None:
    out = Path(out_dir)
    record = json.loads((out / "reproduce.json").read_text())
    lines = [f"# Reproduction: `{record['preset']}` preset, {record['seeds']} seeds", "",
             f"Command: `memlens reproduce --preset {record['preset']} --seeds {record['seeds']} "
             f"--jobs {record['jobs']} --out {out}`" + (f" with `--set {' --set '.join(record['sets'])}`"
                                                         if record["sets"] else ""), "",
             f"Wall time of this call: {record['wall_seconds'] / 60:.1f} min on the machine it ran on "
             f"({record['jobs']} runs at a time). Runs reused from an earlier call show their original "
             "training time below.", "",
             "| run | state before | training wall s | steps/s | test >= 0.9 at | noisy mem. >= 0.5 at | "
             ">= 0.9 at | final test | final clean | final noisy memorized | final noisy true |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in record["runs"]:
        summary_path = out / run["job"] / "summary.json"
        if not summary_path.exists():
            lines.append(f"| {run['job']} | {run['state_before']} | not finished | | | | | | | | |")
            continue
        s = json.loads(summary_path.read_text())
        p, f = s["phases"], s["final_metrics"]
        lines.append(
            f"| {run['job']} | {run['state_before']} | {s['wall_seconds']:.0f} | {s['steps_per_second']:.1f} | "
            f"{p.get('step_test_acc_0.9')} | {p.get('step_noisy_memorized_0.5')} | {p.get('step_noisy_memorized_0.9')} | "
            f"{f['test_acc']:.4f} | {f['train_clean_acc']:.4f} | {f['noisy_memorized_acc']:.4f} | "
            f"{f['noisy_true_acc']:.4f} |")
    lines += ["", "## Claims scorecard", "", "Statistics, thresholds and reasons: docs/claims.md.", "",
              to_markdown(record["claims"])]
    atomic_write_text(doc, "\n".join(lines))
    print(f"wrote {doc}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
