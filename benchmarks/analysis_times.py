"""`memlens analyze` on one run: this checkout against an earlier commit, alternated in one run.

    .venv/bin/python benchmarks/analysis_times.py --run RUN_DIR --baseline-commit COMMIT \
        [--repeats 1] [--threads 1] [--only probes,neurons]

The earlier commit is checked out into a temporary git worktree; each repeat runs
``memlens analyze`` on its own copy of the run (so neither reads the other's results) in a fresh
process, first the baseline and then this checkout (reversed on odd repeats), with
``OMP_NUM_THREADS=--threads``, and reads each analysis' seconds from its
``analysis/<name>.json``. The results of both must agree: each analysis' JSON summaries are
compared and the largest difference is reported beside the times. Writes
docs/benchmarks/analysis_times.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, command_line, write_doc, write_json  # noqa: E402


def analyze(source: Path, run: Path, only: str | None, threads: int) -> dict[str, dict]:
    """Run ``memlens analyze`` from the checkout ``source`` on ``run``; analysis name -> JSON."""
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "memlens.cli", "analyze", str(run), "--device", "cpu"]
    if only:
        cmd += ["--only", only]
    subprocess.run(cmd, env=env, check=True, cwd=source, stdout=subprocess.DEVNULL)
    return {p.stem: json.loads(p.read_text()) for p in sorted((run / "analysis").glob("*.json"))}


def largest_difference(a, b) -> float:
    """The largest absolute difference between the numbers of two JSON values of one shape
    (inf where the shapes or any other value differ), ignoring the time taken and the run's
    path (each side analyzes its own copy)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - {"seconds", "run"}
        return max((largest_difference(a.get(k), b.get(k)) for k in keys), default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return float("inf")
        return max((largest_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, bool) or isinstance(b, bool):
        return 0.0 if a == b else float("inf")
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b))
    return 0.0 if a == b else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained run directory")
    parser.add_argument("--baseline-commit", required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=None)
    args = parser.parse_args()
    run = Path(args.run).resolve()
    if not (run / "final.safetensors").exists():
        raise SystemExit(f"{run} is not a finished run (no final.safetensors)")
    seconds: dict[str, dict[str, list[float]]] = {"baseline": {}, "memlens": {}}
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.baseline_commit],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        try:
            sources = {"baseline": tree, "memlens": ROOT}
            for i in range(args.repeats):
                for name in (["baseline", "memlens"] if i % 2 == 0 else ["memlens", "baseline"]):
                    copy = Path(tmp) / f"{name}-{i}" / run.name
                    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("analysis"))
                    out = analyze(sources[name], copy, args.only, args.threads)
                    for analysis, data in out.items():
                        seconds[name].setdefault(analysis, []).append(data["seconds"])
                    results[name] = out
                    shutil.rmtree(copy.parent)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    rows = []
    for analysis in seconds["memlens"]:
        before = statistics.median(seconds["baseline"].get(analysis, [float("nan")]))
        after = statistics.median(seconds["memlens"][analysis])
        diff = largest_difference(results["baseline"].get(analysis), results["memlens"][analysis])
        rows.append({"analysis": analysis, "baseline_seconds": before, "memlens_seconds": after,
                     "ratio": before / after, "largest_difference": diff})
    total_before = sum(r["baseline_seconds"] for r in rows)
    total_after = sum(r["memlens_seconds"] for r in rows)
    record = {"command": command_line(), "run": run.name, "baseline_commit": args.baseline_commit,
              "threads": args.threads, "repeats": args.repeats, "rows": rows,
              "total_baseline_seconds": total_before, "total_memlens_seconds": total_after}
    write_json("analysis_times.json", record)
    lines = [f"`memlens analyze` on {run.name}, {args.threads} torch thread(s), commit "
             f"{args.baseline_commit} (before) and this checkout (after), alternated in one run "
             f"({args.repeats} repeat(s)). Command: `{record['command']}`.", "",
             "| analysis | before s | after s | speed-up | largest difference in its results |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['analysis']} | {r['baseline_seconds']:.1f} | {r['memlens_seconds']:.1f} | "
                     f"{r['ratio']:.2f}x | {r['largest_difference']:.3g} |")
    lines.append(f"| all | {total_before:.1f} | {total_after:.1f} | {total_before / total_after:.2f}x | |")
    lines += ["", "The largest difference is taken over every number of the analysis' JSON, per-example "
              "0/1 results included: 1 means that some example's result flipped (docs/decisions.md "
              "says how much each changed analysis moved)."]
    write_doc("analysis_times.md", "# Analyses: this checkout against an earlier commit\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
