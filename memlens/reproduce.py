"""``memlens reproduce``: train both tasks for each seed, analyze, report, score the claims.

Each (task, seed) is one job: ``memlens train`` (resumed when a run was interrupted, skipped
when it finished), then ``memlens analyze --only`` the analyses it lacks. Jobs run as fresh
processes, ``--jobs`` at a time, each with its share of the cores; their output goes to
``OUT/logs/<job>.log``. Finished runs are reused and never overwritten: a finished run whose
configuration differs from the one asked for stops everything before any work. At the end the
claims scorecard (``claims.json``, ``claims.md``, see memlens/claims.py) and ``report.html`` are
written from whatever the runs hold, and ``reproduce.json`` records the timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from memlens.analysis.registry import ANALYSES, ANALYSIS_DIR
from memlens.claims import score, to_markdown
from memlens.config import ConfigError, require_int
from memlens.io import atomic_write_json, atomic_write_text
from memlens.presets import PRESET_NAMES
from memlens.tasks import TASKS
from memlens.training import make_run_config
from memlens.training.config import RunConfig
from memlens.training.run import CONFIG, FINAL, SUMMARY, RunDirError

DEFAULT_TASKS = ("fda", "thr")


@dataclass(frozen=True)
class Job:
    task: str
    seed: int
    run_dir: Path
    config: RunConfig

    @property
    def name(self) -> str:
        return self.run_dir.name


def run_state(run_dir: Path) -> str:
    """``new`` (absent or empty), ``unfinished`` or ``finished``; anything else is an error."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    if not (run_dir / CONFIG).exists():
        raise RunDirError(f"{run_dir} is not empty and is not a memlens run directory; "
                          "move it away or choose another --out")
    return "finished" if (run_dir / FINAL).exists() and (run_dir / SUMMARY).exists() else "unfinished"


def missing_analyses(run_dir: Path) -> list[str]:
    """Analyses whose result file is absent or unreadable."""
    missing = []
    for name in ANALYSES:
        path = run_dir / ANALYSIS_DIR / f"{name}.json"
        try:
            json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            missing.append(name)
    return missing


def plan(preset: str, seeds: int, out: Path, tasks=DEFAULT_TASKS,
         overrides: dict | None = None) -> list[Job]:
    """The jobs, validated before any work: names, counts, overrides and existing runs.

    >>> import tempfile
    >>> [j.name for j in plan("tiny", 2, Path(tempfile.mkdtemp()), tasks=("fda",))]
    ['fda-tiny-s0', 'fda-tiny-s1']
    """
    if preset not in PRESET_NAMES:
        raise ConfigError(f"preset={preset!r} is invalid: expected one of {list(PRESET_NAMES)}")
    require_int(seeds, "seeds", 1)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"tasks={list(tasks)!r} is invalid: expected some of {sorted(TASKS)}")
    jobs = []
    for task in tasks:
        for seed in range(seeds):
            config = make_run_config(task, preset, seed, dict(overrides or {}))
            run_dir = out / f"{task}-{preset}-s{seed}"
            state = run_state(run_dir)
            if state != "new":
                stored = json.loads((run_dir / CONFIG).read_text())["run"]
                if RunConfig.from_dict(stored).experiment_dict() != config.experiment_dict():
                    raise RunDirError(f"{run_dir} holds a different run than --preset {preset} "
                                      f"--seed {seed} with these settings; it is left untouched: "
                                      "choose another --out")
            jobs.append(Job(task, seed, run_dir, config))
    return jobs


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "memlens.cli", *args]


def _run_step(cmd: list[str], out, env: dict) -> tuple[int, float]:
    """Run one logged command; returns (exit code, seconds)."""
    out.write(f"$ {' '.join(cmd)}\n")
    out.flush()
    t0 = time.perf_counter()
    code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    return code, round(time.perf_counter() - t0, 1)


def run_job(job: Job, preset: str, device: str, threads: int, sets: list[str], log_dir: Path) -> dict:
    """Train (or resume, or skip) and analyze one run in fresh processes; returns its record."""
    log = log_dir / f"{job.name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    record = {"job": job.name, "state_before": run_state(job.run_dir), "steps": []}
    start = time.perf_counter()

    def finish(ok: bool) -> dict:
        record.update(ok=ok, seconds=round(time.perf_counter() - start, 1), log=str(log))
        return record

    with open(log, "a") as out:
        if record["state_before"] != "finished":
            train = _cli("train", job.task, "--preset", preset, "--seed", str(job.seed), "--out",
                         str(job.run_dir), "--device", device, "--no-progress",
                         *[a for s in sets for a in ("--set", s)])
            if record["state_before"] == "unfinished":
                train.append("--resume")
            code, seconds = _run_step(train, out, env)
            record["steps"].append({"step": "train", "seconds": seconds, "rc": code})
            if code:
                return finish(False)
        missing = missing_analyses(job.run_dir)  # after training: a new run lacks them all
        if missing:
            analyze = _cli("analyze", str(job.run_dir), "--only", ",".join(missing), "--device", device)
            code, seconds = _run_step(analyze, out, env)
            record["steps"].append({"step": "analyze", "analyses": missing, "seconds": seconds, "rc": code})
            if code:
                return finish(False)
    return finish(True)


def score_runs(runs: dict[str, list[Path]]) -> list[dict]:
    """The claims scorecard for ``{task: [run_dir, ...]}``; unfinished or missing runs make
    the claims that need them ``not measured``."""
    summaries = {}
    for dirs in runs.values():
        for run_dir in dirs:
            path = run_dir / SUMMARY
            summaries[run_dir] = json.loads(path.read_text()) if path.exists() else {}
    return score(runs, summaries)


def score_run_dirs(run_dirs: list[Path]) -> list[dict]:
    """The claims scorecard over run directories, grouped by the task each holds."""
    runs: dict[str, list[Path]] = {}
    for run_dir in run_dirs:
        task = json.loads((run_dir / CONFIG).read_text())["run"]["task"]
        runs.setdefault(task, []).append(run_dir)
    return score_runs(runs)


def reproduce(preset: str = "small", seeds: int = 3, out: str | Path | None = None, jobs: int = 1,
              device: str = "auto", tasks=DEFAULT_TASKS, sets: list[str] | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Run the whole study; returns the ``reproduce.json`` record (claims rows included).

    ``sets`` are ``--set`` overrides (``"train.steps=100"``) applied to every run.
    """
    from memlens.cli import parse_sets

    sets = list(sets or [])
    out = Path(out) if out else Path("runs") / f"reproduce-{preset}"
    require_int(jobs, "jobs", 1)
    job_list = plan(preset, seeds, out, tasks, parse_sets(sets))  # every check before any work
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    log(f"reproduce: {len(job_list)} runs ({', '.join(j.name for j in job_list)}) in {out}, "
        f"{jobs} at a time, {threads} thread(s) each; logs in {log_dir}")
    start = time.perf_counter()
    records = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_job, j, preset, device, threads, sets, log_dir): j for j in job_list}
        for done, future in enumerate(as_completed(futures), 1):
            record = future.result()
            records.append(record)
            status = "ok" if record["ok"] else f"FAILED (see {record['log']})"
            log(f"[{done}/{len(job_list)}] {record['job']}: {status} in {record['seconds']:.0f} s "
                f"(was {record['state_before']})")
    runs: dict[str, list[Path]] = {}
    for job in job_list:
        runs.setdefault(job.task, []).append(job.run_dir)
    rows = score_runs(runs)
    atomic_write_json(out / "claims.json", rows)
    atomic_write_text(out / "claims.md", _claims_page(rows, preset, seeds))
    from memlens.viz.report import write_report

    started = [j.run_dir for j in job_list if (j.run_dir / CONFIG).exists()]  # a failed start has none
    report = write_report(started, out / "report.html", claims=rows) if started else None
    wall = time.perf_counter() - start
    result = {"preset": preset, "seeds": seeds, "jobs": jobs, "sets": sets, "out": str(out),
              "wall_seconds": round(wall, 1), "runs": sorted(records, key=lambda r: r["job"]),
              "claims": rows, "report": str(report) if report else None}
    atomic_write_json(out / "reproduce.json", result)
    log(f"claims: {out / 'claims.md'}; report: {report}; wall time {wall:.0f} s")
    for row in rows:
        log(f"  claim {row['claim']} {row['task']}: {row['verdict']} (mean {row['mean']})")
    return result


def _claims_page(rows: list[dict], preset: str, seeds: int) -> str:
    return (f"# Claims scorecard ({preset} preset, {seeds} seed(s))\n\n"
            "Thresholds and their reasons: docs/claims.md. Generated by `memlens reproduce`.\n\n"
            + to_markdown(rows))
