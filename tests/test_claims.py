import json

import pytest

from memlens.claims import CLAIMS, ci95, score, to_markdown
from memlens.cli import main


def fake_run(tmp_path, name, mem_step, test_step, final_mem, entropy):
    run = tmp_path / name
    (run / "analysis").mkdir(parents=True)
    summary = {"phases": {"step_test_acc_0.9": test_step, "step_noisy_memorized_0.5": mem_step},
               "final_metrics": {"noisy_memorized_acc": final_mem, "test_acc": 0.97}}
    (run / "analysis" / "encoding.json").write_text(json.dumps(
        {"summary": {"noisy": {"mean_entropy": entropy}}}))
    return run, summary


def test_verdicts_follow_every_seed(tmp_path):
    runs, summaries = [], {}
    for i, (mem_step, final_mem) in enumerate([(1200, 0.99), (1500, 0.95), (900, 0.98)]):
        run, summary = fake_run(tmp_path, f"fda-s{i}", mem_step, 250, final_mem, 0.8)
        runs.append(run)
        summaries[run] = summary
    rows = {(r["claim"], r["task"]): r for r in score({"fda": runs}, summaries)}
    assert rows[(1, "fda")]["verdict"] == "holds"
    assert rows[(1, "fda")]["per_seed"] == [950.0, 1250.0, 650.0]
    assert rows[(2, "fda")]["verdict"] == "holds" and rows[(2, "fda")]["mean"] == pytest.approx((0.97 + 0.95 + 0.97) / 3, abs=1e-4)
    assert rows[(5, "fda")]["verdict"] == "holds"
    assert rows[(3, "fda")]["verdict"] == "not measured"  # no probes.json
    assert "memlens analyze" in rows[(3, "fda")]["why"]
    assert rows[(6, "fda")]["verdict"] == "not measured"
    summaries[runs[1]]["final_metrics"]["noisy_memorized_acc"] = 0.5
    rows = {(r["claim"], r["task"]): r for r in score({"fda": runs}, summaries)}
    assert rows[(2, "fda")]["verdict"] == "does not hold"
    assert "1 of 3 seeds" in rows[(2, "fda")]["why"]
    md = to_markdown(list(rows.values()))
    assert "**does not hold**" in md and "| 2 | fda |" in md


def test_never_memorized_is_not_measured(tmp_path):
    run, summary = fake_run(tmp_path, "thr-s0", None, 4000, 0.1, 0.9)
    row = next(r for r in score({"thr": [run]}, {run: summary}) if r["claim"] == 1)
    assert row["verdict"] == "not measured" and "never reached 0.5" in row["why"]


def test_claims_about_memorized_examples_need_a_model_that_memorized_and_generalized(tmp_path):
    run, summary = fake_run(tmp_path, "fda-s0", None, 250, 0.1, 0.9)  # never memorized
    rows = {r["claim"]: r for r in score({"fda": [run]}, {run: summary})}
    assert rows[5]["verdict"] == "not measured"
    assert "did not memorize the noise (final noisy recall 0.100 < 0.5)" in rows[5]["why"]
    summary["final_metrics"].update(noisy_memorized_acc=0.95, test_acc=0.4)
    rows = {r["claim"]: r for r in score({"fda": [run]}, {run: summary})}
    assert rows[5]["verdict"] == "not measured" and "did not generalize" in rows[5]["why"]
    summary["final_metrics"]["test_acc"] = 0.95
    rows = {r["claim"]: r for r in score({"fda": [run]}, {run: summary})}
    assert rows[5]["verdict"] == "holds" and rows[5]["per_seed"] == [0.9]


def test_ci95():
    low, high = ci95([1.0, 2.0, 3.0])
    assert low == pytest.approx(2 - 4.303 / 3**0.5) and high == pytest.approx(2 + 4.303 / 3**0.5)
    assert all(c.number == n for n, c in CLAIMS.items())


def test_claims_command_scores_run_directories_and_refuses_unknown_claims(tiny_run, tmp_path, capsys):
    assert main(["claims", str(tiny_run), "--only", "9,2", "--out", str(tmp_path / "x")]) == 2
    assert "unknown claim '9': the claims are 1, 2, 3, 4, 5, 6, 7" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before any work
    assert main(["claims", str(tmp_path), "--only", "1"]) == 2
    assert "not memlens run directories" in capsys.readouterr().err
    assert main(["claims", str(tiny_run), "--only", "2,5", "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "claims.json").read_text())
    assert [(r["claim"], r["task"]) for r in rows] == [(2, "fda"), (5, "fda")]
    # 60 steps of the tiny preset learn nothing: claim 2 fails, claim 5 has nothing to be about.
    assert [r["verdict"] for r in rows] == ["does not hold", "not measured"]
    assert "| 2 | fda |" in (tmp_path / "out" / "claims.md").read_text()
