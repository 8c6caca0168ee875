"""The ``memlens`` command line: a thin layer over the library.

    memlens data TASK [--preset P] [--seed N] [--noise-rate R] [--show K] [--export FILE]
    memlens train TASK [--preset P] [--seed N] [--noise-rate R] [--out DIR] [--resume] ...
    memlens analyze RUN_DIR [--only NAME,...]
    memlens report RUN_DIR [RUN_DIR ...] [--out report.html]
    memlens explore RUN_DIR [--out explore.html] [--per-group N] [--examples noisy-17,...]
    memlens claims RUN_DIR [RUN_DIR ...] [--only N,...] [--out DIR]
    memlens reproduce [--preset P] [--seeds K] [--out DIR] [--jobs N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from memlens.config import ConfigError, parse_sets
from memlens.presets import DEFAULT_PRESET, PRESET_NAMES
from memlens.tasks import TASKS


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", choices=sorted(TASKS), help="the task: fda (addition), thr (two-hop), modadd (modular addition)")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESET_NAMES)
    p.add_argument("--seed", type=int, default=0, help="seed of data, noise, init and batches")
    p.add_argument("--noise-rate", type=float, default=None, help="fraction of noisy labels")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any preset field, e.g. task.n_train=5000 (repeatable)")


def _task_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--set task.X=V`` and ``--noise-rate`` as task-config overrides."""
    sets = parse_sets(args.sets)
    overrides: dict[str, Any] = {}
    for key, value in sets.items():
        section, _, name = key.partition(".")
        if section != "task" or not name:
            raise ConfigError(f"--set {key}={value} is invalid here: `memlens data` takes task.FIELD only")
        overrides[name] = value
    if args.noise_rate is not None:
        overrides["noise_rate"] = args.noise_rate
    return overrides


def _cmd_data(args: argparse.Namespace) -> int:
    from memlens.tasks import make_task
    from memlens.tasks.export import export_jsonl, format_record

    if args.show < 0:
        raise ConfigError(f"--show {args.show} is invalid: expected an integer >= 0")
    task = make_task(args.task, args.preset, **_task_overrides(args))
    start = time.perf_counter()
    data = task.generate(seed=args.seed)
    elapsed = time.perf_counter() - start
    print(f"memlens data {args.task} --preset {args.preset} --seed {args.seed}")
    print(f"config: {json.dumps(dataclasses.asdict(task.config))}")
    stats = dict(data.stats, hash=data.content_hash[:16], generate_seconds=round(elapsed, 3))
    print("stats:  " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    print("layout: " + ", ".join(f"{k}={v}" for k, v in task.describe_positions().items()))
    if args.export:
        rows = export_jsonl(task, data, args.export)
        print(f"exported {rows} examples to {args.export}")
    noisy_first = [i for i in range(len(data.train)) if data.train.is_noisy[i]][:1]
    shown = noisy_first + [i for i in range(args.show) if i not in noisy_first]
    for i in shown[: args.show]:
        print(format_record(task.record(data.train, i, "train")))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from memlens.training.cli import run_train_command

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps {args.steps} is invalid: expected an integer >= 1")
    return run_train_command(args, parse_sets(args.sets))


def _cmd_analyze(args: argparse.Namespace) -> int:
    from memlens.analysis.common import AnalysisError
    from memlens.analysis.runner import analyze_run, parse_only
    from memlens.training.run import RunDirError

    try:
        parse_only(args.only)  # refuse an unknown name before loading anything
        analyze_run(args.run_dir, args.only, device=args.device, baseline=args.baseline)
    except (AnalysisError, RunDirError) as err:
        print(f"memlens analyze: error: {err}", file=sys.stderr)
        return 2
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from memlens.analysis.common import AnalysisError
    from memlens.training.run import RunDirError
    from memlens.viz.report import write_report

    try:
        path = write_report(args.run_dirs, args.out, log=print)
    except (AnalysisError, RunDirError) as err:
        print(f"memlens report: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


def _cmd_explore(args: argparse.Namespace) -> int:
    from memlens.analysis.common import AnalysisError
    from memlens.training.run import RunDirError
    from memlens.viz.explore import write_explorer

    start = time.perf_counter()
    try:
        path = write_explorer(args.run_dir, args.out, per_group=args.per_group,
                              examples=args.examples, sites=args.sites, log=print)
    except (AnalysisError, RunDirError) as err:
        print(f"memlens explore: error: {err}", file=sys.stderr)
        return 2
    size = path.stat().st_size / 1e6
    print(f"explore: {path} ({size:.1f} MB, {time.perf_counter() - start:.1f} s); open it offline, "
          "#example=noisy-17 selects an example")
    if size > 20:
        print(f"explore: the page is over 20 MB; a smaller --per-group keeps it lighter (each "
              "example adds a few KB: docs/explore.md)")
    return 0


def _cmd_claims(args: argparse.Namespace) -> int:
    from memlens.claims import parse_claims, to_markdown
    from memlens.io import atomic_write_json, atomic_write_text
    from memlens.claims import score_run_dirs
    from memlens.training.run import RunDirError
    from memlens.viz.report import check_run_dirs

    numbers = parse_claims(args.only)  # every check before any work
    try:
        dirs = check_run_dirs(args.run_dirs)
    except RunDirError as err:
        print(f"memlens claims: error: {err}", file=sys.stderr)
        return 2
    rows = score_run_dirs(dirs, only=numbers)
    table = to_markdown(rows)
    print(table)
    if args.out:
        out = Path(args.out)
        atomic_write_json(out / "claims.json", rows)
        atomic_write_text(out / "claims.md", "# Claims scorecard\n\nThresholds and their reasons: "
                          "docs/claims.md. Generated by `memlens claims`.\n\n" + table)
        print(f"claims: {out / 'claims.md'}, {out / 'claims.json'}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from memlens.reproduce import reproduce
    from memlens.training.run import RunDirError

    tasks = None if args.tasks is None else [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        result = reproduce(preset=args.preset, seeds=args.seeds, out=args.out, jobs=args.jobs,
                           device=args.device, tasks=tasks, sets=args.sets,
                           baselines=args.baselines, reference=not args.no_reference)
    except RunDirError as err:
        print(f"memlens reproduce: error: {err}", file=sys.stderr)
        return 2
    failed = [r["job"] for r in result["runs"] if not r["ok"]]
    if failed:
        print(f"memlens reproduce: {len(failed)} run(s) failed: {', '.join(failed)} (logs in "
              f"{result['out']}/logs)", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    from memlens.tasks import load_task_modules

    load_task_modules()  # tasks of your own (MEMLENS_TASK_MODULES) become valid choices
    parser = argparse.ArgumentParser(prog="memlens", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="print or export a task's examples with intermediates")
    _add_common(p)
    p.add_argument("--show", type=int, default=5, metavar="K", help="examples to print")
    p.add_argument("--export", default=None, metavar="FILE.jsonl",
                   help="write every example as one JSON object per line")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("train", help="train a model and write a run directory")
    _add_common(p)
    p.add_argument("--out", default=None, help="run directory (default runs/TASK-PRESET-sSEED)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--steps", type=int, default=None, help="training steps (overrides the preset)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("analyze", help="run analyses on a run directory (writes RUN/analysis/*.json)")
    p.add_argument("run_dir", help="a directory written by `memlens train`")
    p.add_argument("--only", default=None, metavar="NAME,...", help="analyses to run (default: all)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--baseline", default=None, metavar="CLEAN_RUN_DIR",
                   help="the paired noise-free run (behaviour compares test accuracy with it)")
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("report", help="write one self-contained HTML page from run directories")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="report.html", help="the HTML file (default report.html)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("explore", help="write one offline HTML page to explore single examples "
                                       "(tokens, logit lens, attention, attribution, patching)")
    p.add_argument("run_dir", help="a directory written by `memlens train`")
    p.add_argument("--out", default="explore.html", help="the HTML file (default explore.html)")
    p.add_argument("--per-group", type=int, default=200, metavar="N",
                   help="the first N examples of each group (clean, noisy, test) on the page (default 200)")
    p.add_argument("--examples", default=None, metavar="ID,...",
                   help="more examples to include, e.g. noisy-317,test-4")
    p.add_argument("--sites", default="auto", choices=("auto", "patching", "default"),
                   help="patching sites: RUN/analysis/patching.json's (patching), the fixed default "
                        "rule (default), or the first when present (auto)")
    p.set_defaults(func=_cmd_explore)

    p = sub.add_parser("claims", help="score the paper's claims on existing run directories "
                                      "(seeds of a task together; a pure-memorizer reference "
                                      "run among them is used as the reference)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--only", default=None, metavar="N,...", help="claim numbers, 1-7 (default: all)")
    p.add_argument("--out", default=None, help="also write claims.json and claims.md to this directory")
    p.set_defaults(func=_cmd_claims)

    p = sub.add_parser("reproduce", help="train, analyze and report both tasks for several seeds; "
                                         "score the claims (claims.json, claims.md)")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESET_NAMES)
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..K-1 per task (default 5)")
    p.add_argument("--out", default=None, help="directory of the runs (default runs/reproduce-PRESET)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (processes)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--tasks", default=None,
                   help="comma-separated tasks (default: fda,thr, those that define the preset)")
    p.add_argument("--baselines", type=int, default=None,
                   help="noise-free baseline seeds per task (default: min(seeds, 3))")
    p.add_argument("--no-reference", action="store_true",
                   help="do not train the pure-memorizer reference")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field in every run (repeatable)")
    p.set_defaults(func=_cmd_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
    except ConfigError as err:
        print(f"memlens: error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"memlens {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
