"""``memlens reproduce``: train every run of the study, analyze them, report, score the claims.

The study, per task: ``--seeds`` runs with the preset's noise, noise-free **baselines** (noise
rate 0, seeds 0..``--baselines``-1, paired with the runs of the same seed: claim 2) and one
**pure-memorizer reference** (every label random: the model built to contradict claims 1, 4, 5;
``Preset.reference`` may shrink its training set so that it memorizes within the budget).

Phase 1 trains every run (``memlens train``, resumed when a run was interrupted, skipped when it
finished); phase 2 analyzes them (``memlens analyze --only`` what each lacks; runs with a paired
baseline get ``--baseline``). Each step is a fresh process, ``--jobs`` at a time, each with its
share of the cores; output goes to ``OUT/logs/<run>.log``. Finished runs are reused and never
overwritten: a finished run whose configuration differs from the one asked for stops everything
before any work. At the end the claims scorecard (``claims.json``, ``claims.md``, see
memlens/claims.py) and ``report.html`` are written from whatever the runs hold, and
``reproduce.json`` records the timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

from memlens.analysis.runner import ANALYSES, ANALYSIS_DIR, REFERENCE_ANALYSES
from memlens.claims import claim_verdicts, role_of, score, to_markdown
from memlens.config import ConfigError, parse_sets, require_int
from memlens.io import atomic_write_json, atomic_write_text
from memlens.presets import PRESET_NAMES, get_preset, has_preset
from memlens.tasks import TASKS, make_task
from memlens.training import make_run_config
from memlens.training.config import RunConfig
from memlens.training.run import CONFIG, FINAL, SUMMARY, RunDirError, differing_keys, read_header

ROLES = ("run", "baseline", "reference")
DEFAULT_TASKS = ("fda", "thr")


@dataclass(frozen=True)
class Job:
    task: str
    seed: int
    run_dir: Path
    config: RunConfig
    role: str = "run"
    sets: tuple[str, ...] = field(default=())  # the --set overrides that make this run's config

    @property
    def name(self) -> str:
        return self.run_dir.name


def role_overrides(task: str, preset: str, role: str) -> dict:
    """The ``section.field`` overrides that turn the preset into a baseline or a reference."""
    if role == "baseline":
        return {"task.noise_rate": 0.0}
    if role == "reference":
        own = {f"task.{k}": v for k, v in make_task(task, preset).reference_overrides().items()}
        return {**own, **get_preset(task, preset).reference}
    return {}


def run_state(run_dir: Path) -> str:
    """``new`` (absent or empty), ``unfinished`` or ``finished``; anything else is an error."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "new"
    if not (run_dir / CONFIG).exists():
        raise RunDirError(f"{run_dir} is not empty and is not a memlens run directory; "
                          "move it away or choose another --out")
    return "finished" if (run_dir / FINAL).exists() and (run_dir / SUMMARY).exists() else "unfinished"


def missing_analyses(run_dir: Path) -> list[str]:
    """Analyses that apply to the run's task whose result file is absent or unreadable."""
    from memlens.analysis.runner import applicable
    from memlens.tasks import task_from_config

    stored = read_header(run_dir)["run"]
    missing = []
    for name in applicable(task_from_config(stored["task"], stored["task_config"])):
        path = run_dir / ANALYSIS_DIR / f"{name}.json"
        try:
            json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            missing.append(name)
    return missing


def default_tasks(preset: str) -> tuple[str, ...]:
    """FDA and THR, or those of them that define ``preset`` (``quick``: FDA only).

    >>> default_tasks("small"), default_tasks("quick")
    (('fda', 'thr'), ('fda',))
    """
    return tuple(t for t in DEFAULT_TASKS if has_preset(t, preset))


def plan(preset: str, seeds: int, out: Path, tasks=None, overrides: dict | None = None,
         baselines: int = 0, reference: bool = False) -> list[Job]:
    """The jobs, validated before any work: names, counts, overrides and existing runs.

    >>> import tempfile
    >>> [j.name for j in plan("tiny", 2, Path(tempfile.mkdtemp()), tasks=("fda",), baselines=1,
    ...                       reference=True)]
    ['fda-tiny-s0', 'fda-tiny-s1', 'fda-tiny-clean-s0', 'fda-tiny-memorizer-s0']
    """
    if preset not in PRESET_NAMES:
        raise ConfigError(f"preset={preset!r} is invalid: expected one of {list(PRESET_NAMES)}")
    require_int(seeds, "seeds", 1)
    require_int(baselines, "baselines", 0, seeds)
    from memlens.tasks import load_task_modules

    load_task_modules()
    tasks = default_tasks(preset) if tasks is None else tasks
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"tasks={list(tasks)!r} is invalid: expected some of {sorted(TASKS)}")
    jobs = []
    for task in tasks:
        wanted = [("run", s, f"{task}-{preset}-s{s}") for s in range(seeds)]
        wanted += [("baseline", s, f"{task}-{preset}-clean-s{s}") for s in range(baselines)]
        wanted += [("reference", 0, f"{task}-{preset}-memorizer-s0")] if reference else []
        for role, seed, name in wanted:
            extra = role_overrides(task, preset, role)
            config = make_run_config(task, preset, seed, {**dict(overrides or {}), **extra})
            run_dir = out / name
            state = run_state(run_dir)
            if state != "new":
                stored = read_header(run_dir)["run"]
                stored_experiment = RunConfig.from_dict(stored).experiment_dict()
                if stored_experiment != config.experiment_dict():
                    diffs = ", ".join(differing_keys(stored_experiment, config.experiment_dict()))
                    raise RunDirError(f"{run_dir} holds a different run than {name} with these "
                                      f"settings (differs in {diffs}; an older memlens's preset?); "
                                      "it is left untouched: choose another --out or remove it")
            sets = tuple(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in extra.items())
            jobs.append(Job(task, seed, run_dir, config, role, sets))
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


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def train_job(job: Job, preset: str, device: str, threads: int, sets: list[str], log_dir: Path) -> dict:
    """Train (or resume, or skip) one run in a fresh process; returns its record."""
    record = {"job": job.name, "role": job.role, "state_before": run_state(job.run_dir), "steps": []}
    start = time.perf_counter()
    with open(log_dir / f"{job.name}.log", "a") as out:
        if record["state_before"] != "finished":
            cmd = _cli("train", job.task, "--preset", preset, "--seed", str(job.seed), "--out",
                       str(job.run_dir), "--device", device, "--no-progress",
                       *[a for s in [*sets, *job.sets] for a in ("--set", s)])
            if record["state_before"] == "unfinished":
                cmd.append("--resume")
            code, seconds = _run_step(cmd, out, _env(threads))
            record["steps"].append({"step": "train", "seconds": seconds, "rc": code})
    record.update(ok=all(s["rc"] == 0 for s in record["steps"]),
                  seconds=round(time.perf_counter() - start, 1), log=str(log_dir / f"{job.name}.log"))
    return record


def analyze_job(job: Job, device: str, threads: int, log_dir: Path, baseline: Path | None) -> dict:
    """Run the analyses a finished run lacks, in a fresh process; returns its record."""
    record = {"job": job.name, "steps": []}
    wanted = {"run": list(ANALYSES), "reference": list(REFERENCE_ANALYSES), "baseline": []}[job.role]
    missing = [n for n in missing_analyses(job.run_dir) if n in wanted]
    start = time.perf_counter()
    if missing:
        with open(log_dir / f"{job.name}.log", "a") as out:
            cmd = _cli("analyze", str(job.run_dir), "--only", ",".join(missing), "--device", device)
            if baseline is not None:
                cmd += ["--baseline", str(baseline)]
            code, seconds = _run_step(cmd, out, _env(threads))
        record["steps"].append({"step": "analyze", "analyses": missing, "seconds": seconds, "rc": code})
    record.update(ok=all(s["rc"] == 0 for s in record["steps"]),
                  seconds=round(time.perf_counter() - start, 1))
    return record


def _schedule(job_list: list[Job], by_cost: list[Job], jobs: int, train, analyze, log
              ) -> tuple[list[dict], list[dict]]:
    """Train every job (``by_cost`` order) and analyze each run as soon as it and its noise-free
    baseline are trained, ``jobs`` processes at a time: trainings are started first, analyses as
    they become ready, so no core idles while a phase ends.
    Returns (training records, analysis records), each in the order of ``job_list``."""
    baseline = {(j.task, j.seed): j for j in job_list if j.role == "baseline"}
    analyzable = [j for j in job_list if j.role != "baseline"]

    def base_of(j: Job) -> Job | None:  # a reference has no baseline
        return baseline.get((j.task, j.seed)) if j.role == "run" else None

    def needs(j: Job) -> list[str]:  # trainings an analysis waits for
        return [j.name] + ([base_of(j).name] if base_of(j) is not None else [])

    queue = [("train", j) for j in by_cost]
    trained: dict[str, dict] = {}
    analyzed: dict[str, dict] = {}
    queued = set()
    counts = {"train": 0, "analyze": 0}
    totals = {"train": len(job_list), "analyze": None}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict = {}
        while queue or running:
            while queue and len(running) < jobs:
                kind, j = queue.pop(0)
                if kind == "train":
                    running[pool.submit(train, j)] = (kind, j)
                else:
                    base = base_of(j)
                    ok_base = base.run_dir if base is not None and trained[base.name]["ok"] else None
                    running[pool.submit(analyze, j, ok_base)] = (kind, j)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                kind, j = running.pop(future)
                record = future.result()
                counts[kind] += 1
                if kind == "train":
                    trained[j.name] = record
                    log(f"[{counts[kind]}/{totals[kind]}] train {record['job']}: "
                        f"{'ok' if record['ok'] else 'FAILED'} in {record['seconds']:.0f} s (was {record['state_before']})")
                    for a in analyzable:
                        if a.name not in queued and all(n in trained for n in needs(a)):
                            queued.add(a.name)
                            if trained[a.name]["ok"]:
                                queue.append(("analyze", a))
                    # Every run whose own training failed is never analyzed.
                    totals["analyze"] = sum(1 for a in analyzable if a.name not in trained or trained[a.name]["ok"])
                else:
                    analyzed[j.name] = record
                    log(f"[{counts[kind]}/{totals[kind]}] analyze {record['job']}: "
                        f"{'ok' if record['ok'] else 'FAILED'} in {record['seconds']:.0f} s")
    return ([trained[j.name] for j in job_list if j.name in trained],
            [analyzed[j.name] for j in job_list if j.name in analyzed])


def reproduce(preset: str = "small", seeds: int = 5, out: str | Path | None = None, jobs: int = 1,
              device: str = "auto", tasks=None, sets: list[str] | None = None,
              baselines: int | None = None, reference: bool = True,
              log: Callable[[str], None] = print) -> dict:
    """Run the whole study; returns the ``reproduce.json`` record (claims rows included).

    ``sets`` are ``--set`` overrides (``"train.steps=100"``) applied to every run;
    ``baselines``: noise-free seeds per task (default ``min(seeds, 3)``); ``reference``: train
    the pure-memorizer reference.
    """
    sets = list(sets or [])
    out = Path(out) if out else Path("runs") / f"reproduce-{preset}"
    require_int(jobs, "jobs", 1)
    baselines = min(seeds, 3) if baselines is None else baselines
    job_list = plan(preset, seeds, out, tasks, parse_sets(sets), baselines, reference)  # checks first
    tasks = list(dict.fromkeys(j.task for j in job_list))  # plan resolved the default
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    log(f"reproduce: {len(job_list)} runs ({', '.join(j.name for j in job_list)}) in {out}, "
        f"{jobs} at a time, {threads} thread(s) each; logs in {log_dir}")
    start = time.perf_counter()
    # Longest first (training steps x batch), so that the last job to finish is a short one.
    by_cost = sorted(job_list, key=lambda j: -j.config.train.steps * j.config.train.batch_size)
    trained, analyzed = _schedule(
        job_list, by_cost, jobs,
        lambda j: train_job(j, preset, device, threads, sets, log_dir),
        lambda j, baseline: analyze_job(j, device, threads, log_dir, baseline), log)
    records = _merge(trained, analyzed, log_dir)
    ok = {r["job"] for r in trained if r["ok"]}
    runs = {t: [j.run_dir for j in job_list if j.task == t and j.role == "run"] for t in tasks}
    references = {j.task: j.run_dir for j in job_list if j.role == "reference" and j.name in ok}
    rows = score(runs, references)
    atomic_write_json(out / "claims.json", rows)
    atomic_write_text(out / "claims.md", _claims_page(rows, preset, seeds))
    from memlens.viz.report import write_report

    started = [j.run_dir for j in job_list if j.role == "run" and (j.run_dir / CONFIG).exists()]
    report = write_report(started, out / "report.html", claims=rows,
                          references=list(references.values())) if started else None
    wall = time.perf_counter() - start
    result = {"preset": preset, "seeds": seeds, "baselines": baselines, "reference": reference,
              "jobs": jobs, "sets": sets, "out": str(out), "wall_seconds": round(wall, 1),
              "runs": sorted(records, key=lambda r: r["job"]), "claims": rows,
              "verdicts": claim_verdicts(rows), "report": str(report) if report else None}
    atomic_write_json(out / "reproduce.json", result)
    log(f"claims: {out / 'claims.md'}; report: {report}; wall time {wall:.0f} s")
    for v in result["verdicts"]:
        log(f"  claim {v['claim']} {v['task']}: {v['verdict']} ({', '.join(f'{k} {p}' for k, p in v['parts'].items())})")
    return result


def _merge(trained: list[dict], analyzed: list[dict], log_dir: Path) -> list[dict]:
    """One record per run: its train and analyze steps, wall seconds and status."""
    by_job = {r["job"]: dict(r) for r in trained}
    for r in analyzed:
        rec = by_job[r["job"]]
        rec["steps"] = rec["steps"] + r["steps"]
        rec["seconds"] = round(rec["seconds"] + r["seconds"], 1)
        rec["ok"] = rec["ok"] and r["ok"]
    return list(by_job.values())


def _claims_page(rows: list[dict], preset: str, seeds: int) -> str:
    return (f"# Claims scorecard ({preset} preset, {seeds} seed(s))\n\n"
            "Statistics, controls, thresholds and what would falsify each claim: docs/claims.md "
            "(pre-registered). Generated by `memlens reproduce`.\n\n" + to_markdown(rows))
