"""memlens reproduce: plan checks before any work, reuse of finished runs, resume of unfinished."""

import json
from pathlib import Path

import pytest

from memlens.config import ConfigError
from memlens.reproduce import plan, reproduce, run_state
from memlens.training import make_run_config, train
from memlens.training.run import RunDirError

QUICK = ["train.steps=40"]
VERDICTS = {"holds", "does not hold", "inconclusive", "not measured"}
ROW_KEYS = {"claim", "part", "task", "role", "statistic", "per_seed", "mean", "ci95", "threshold",
            "direction", "units", "verdict", "why", "n_seeds", "n_units", "control", "reference"}


def test_plan_refuses_bad_input_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="preset='huge'"):
        plan("huge", 1, tmp_path)
    with pytest.raises(ConfigError, match="seeds=0"):
        plan("tiny", 0, tmp_path)
    with pytest.raises(ConfigError, match="tasks=.*'abc'"):
        plan("tiny", 1, tmp_path, tasks=("abc",))
    with pytest.raises(ConfigError, match="baselines=3"):
        plan("tiny", 2, tmp_path, baselines=3)
    (tmp_path / "fda-tiny-s0").mkdir()
    (tmp_path / "fda-tiny-s0" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a memlens run directory"):
        plan("tiny", 1, tmp_path, tasks=("fda",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fda-tiny-s0"]


def test_a_finished_run_of_another_config_is_left_untouched(tmp_path):
    other = make_run_config("fda", "tiny", 0, {"train.steps": 20, "task.noise_rate": 0.2})
    train(other, tmp_path / "fda-tiny-s0", progress=False)
    before = (tmp_path / "fda-tiny-s0" / "final.safetensors").stat().st_mtime_ns
    # The message names what differs, so a user who upgraded memlens sees why.
    with pytest.raises(RunDirError, match=r"holds a different run.*differs in .*noise_rate \(0\.2 vs"):
        reproduce("tiny", 1, tmp_path, tasks=("fda",), sets=QUICK, log=lambda _: None)
    assert (tmp_path / "fda-tiny-s0" / "final.safetensors").stat().st_mtime_ns == before
    assert not (tmp_path / "claims.json").exists()


def test_reproduce_tiny_end_to_end_then_reuses_and_resumes(tmp_path):
    # An interrupted run of seed 1: reproduce must resume it, not start over.
    cfg = make_run_config("fda", "tiny", 1, {"train.steps": 40})

    def stop(step, row):
        if step == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "fda-tiny-s1", progress=False, callback=stop)
    assert run_state(tmp_path / "fda-tiny-s1") == "unfinished"

    result = reproduce("tiny", 2, tmp_path, jobs=2, tasks=("fda",), sets=QUICK, baselines=1,
                       reference=True, log=lambda _: None)
    states = {r["job"]: r["state_before"] for r in result["runs"]}
    assert states == {"fda-tiny-s0": "new", "fda-tiny-s1": "unfinished", "fda-tiny-clean-s0": "new",
                      "fda-tiny-memorizer-s0": "new"}
    assert all(r["ok"] for r in result["runs"])
    logged = (tmp_path / "logs" / "fda-tiny-s1.log").read_text()  # commands are logged
    assert "train fda --preset tiny --seed 1" in logged and "--resume" in logged
    assert "--resume" not in (tmp_path / "logs" / "fda-tiny-s0.log").read_text()
    # the baseline and the reference are the same preset with noise 0 and 1
    assert "--set task.noise_rate=0.0" in (tmp_path / "logs" / "fda-tiny-clean-s0.log").read_text()
    assert "--set task.noise_rate=1.0" in (tmp_path / "logs" / "fda-tiny-memorizer-s0.log").read_text()
    # seed 0 is analyzed against its noise-free pair (seed 1 has none); the reference with what
    # claims 4-5 need
    assert f"--baseline {tmp_path / 'fda-tiny-clean-s0'}" in (tmp_path / "logs" / "fda-tiny-s0.log").read_text()
    assert "--baseline" not in logged
    assert {p.stem for p in (tmp_path / "fda-tiny-memorizer-s0" / "analysis").glob("*.json")} == {
        "behaviour", "logit_lens", "patching"}
    for seed in (0, 1):
        assert run_state(tmp_path / f"fda-tiny-s{seed}") == "finished"
        assert len(list((tmp_path / f"fda-tiny-s{seed}" / "analysis").glob("*.json"))) == 8

    rows = json.loads((tmp_path / "claims.json").read_text())
    assert sorted({r["claim"] for r in rows}) == [1, 2, 3, 4, 5, 6, 7]
    for r in rows:
        assert ROW_KEYS <= set(r), sorted(ROW_KEYS - set(r))
        assert r["verdict"] in VERDICTS and r["task"] == "fda"
    # Too small to memorize: claim 1 (the order of two phases) cannot be measured; never faked.
    one = [r for r in rows if r["claim"] == 1]
    assert all(r["verdict"] == "not measured" and r["mean"] is None for r in one)
    # the pure memorizer is shown beside the parts it is defined for
    assert next(r for r in rows if r["claim"] == 2 and r["part"] == "a")["reference"] is not None
    assert "| claim | task | verdict | parts |" in (tmp_path / "claims.md").read_text()
    assert (tmp_path / "report.html").stat().st_size > 100_000
    assert json.loads((tmp_path / "reproduce.json").read_text())["verdicts"]

    final = tmp_path / "fda-tiny-s0" / "final.safetensors"
    before = final.stat().st_mtime_ns
    again = reproduce("tiny", 2, tmp_path, tasks=("fda",), sets=QUICK, baselines=1, reference=True,
                      log=lambda _: None)
    assert {r["state_before"] for r in again["runs"]} == {"finished"}
    assert all(r["steps"] == [] for r in again["runs"])  # nothing trained or analyzed again
    assert final.stat().st_mtime_ns == before


def test_schedule_analyzes_a_run_once_it_and_its_baseline_are_trained(tmp_path):
    """Analyses start while other runs still train, each after its own run and its noise-free
    baseline; a reference has no baseline, and a run whose baseline failed is analyzed
    without one."""
    import threading
    import time

    from memlens.reproduce import _schedule

    jobs = plan("tiny", 2, tmp_path, tasks=("fda",), baselines=2, reference=True)
    names = [j.name for j in jobs]
    slow, failed_base = "fda-tiny-memorizer-s0", "fda-tiny-clean-s1"
    events, lock = [], threading.Lock()

    def note(event):
        with lock:
            events.append(event)

    def train(job):
        note(("train start", job.name))
        time.sleep(0.6 if job.name == slow else 0.05)
        note(("train end", job.name))
        return {"job": job.name, "ok": job.name != failed_base, "seconds": 0.0, "state_before": "new"}

    def analyze(job, baseline):
        note(("analyze", job.name, None if baseline is None else baseline.name))
        return {"job": job.name, "ok": True, "seconds": 0.0}

    by_cost = sorted(jobs, key=lambda j: j.name == slow, reverse=True)  # the slow one first
    trained, analyzed = _schedule(jobs, by_cost, 2, train, analyze, lambda _: None)
    assert [r["job"] for r in trained] == names
    analyses = {e[1]: e[2] for e in events if e[0] == "analyze"}
    assert analyses == {"fda-tiny-s0": "fda-tiny-clean-s0", "fda-tiny-s1": None, slow: None}
    order = [e[:2] for e in events]
    assert order.index(("analyze", "fda-tiny-s0")) < order.index(("train end", slow))
    for run, base in (("fda-tiny-s0", "fda-tiny-clean-s0"), ("fda-tiny-s1", failed_base)):
        assert order.index(("analyze", run)) > max(order.index(("train end", run)), order.index(("train end", base)))
    assert [r["job"] for r in analyzed] == ["fda-tiny-s0", "fda-tiny-s1", slow]


def test_results_doc_script_writes_a_results_page(tiny_run, tmp_path):
    """scripts/results_doc.py (how docs/results pages are written) imports, tabulates a trained
    and analyzed run and scores it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_doc", Path(__file__).parents[1] / "scripts" / "results_doc.py")
    results_doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results_doc)
    page = tmp_path / "page.md"
    results_doc.main(str(tiny_run.parent), str(page), [str(tiny_run)])
    text = page.read_text()
    assert f"| {tiny_run.name} |" in text and "## Claims scorecard" in text and "| 1 | fda |" in text
