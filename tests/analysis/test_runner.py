import json

import pytest

from memlens import load_run, make_run_config, train
from memlens.analysis import AnalysisError
from memlens.analysis.runner import analyze_run, applicable, load_analysis
from memlens.cli import main


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_analyze_writes_every_analysis(tmp_path, task):
    out = tmp_path / task
    cfg = make_run_config(task, "tiny", overrides={"train.steps": 40})
    train(cfg, out, device="cpu", progress=False)
    assert main(["analyze", str(out)]) == 0
    names = applicable(load_run(out).task)
    assert "fourier" not in names and {"probes", "patching", "circuits"} <= set(names)
    for name in names:
        data = load_analysis(out, name)
        assert data["analysis"] == name and data["frame"], name
        assert data["seconds"] >= 0
    patching = load_analysis(out, "patching")
    keys = set(patching["summary"])
    assert keys == ({"bridge_entity"} if task == "thr" else
                    {"column_sum[0]", "column_sum[1]", "carry[1]", "carry[2]"})


def test_missing_and_corrupted_analysis_named(tmp_path):
    with pytest.raises(AnalysisError, match="missing: run `memlens analyze"):
        load_analysis(tmp_path, "probes")
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "probes.json").write_text("{not json")
    with pytest.raises(AnalysisError, match="corrupted"):
        load_analysis(tmp_path, "probes")


def test_only_subset(tmp_path):
    out = tmp_path / "r"
    train(make_run_config("fda", "tiny", overrides={"train.steps": 20}), out, progress=False)
    written = analyze_run(out, "logit_lens", log=lambda _: None)
    assert list(written) == ["logit_lens"]
    assert json.loads(written["logit_lens"].read_text())["summary"]["noisy_true_prob_peak_point"]


def test_probes_when_the_noisy_label_leads_from_the_first_point(tmp_path, monkeypatch):
    """No residual point precedes the takeover: the probes analysis says so (no targets, the
    takeover point) instead of failing, and claim 3 reads it as not measured, naming why."""
    import memlens.analysis.runner as runner
    from memlens.claims import NotMeasured, RunData, load_probes

    out = tmp_path / "r"
    train(make_run_config("fda", "tiny", overrides={"train.steps": 20}), out, progress=False)
    monkeypatch.setattr(runner, "allowed_probe_points", lambda model, noisy: ([], "L0.pre"))
    analyze_run(out, "probes", log=lambda _: None)
    summary = load_analysis(out, "probes")["summary"]
    assert summary["targets"] == [] and summary["takeover_point"] == "L0.pre"
    final = json.loads((out / "summary.json").read_text())
    final["final_metrics"].update(test_acc=1.0, noisy_memorized_acc=1.0)  # past the stage gate
    (out / "summary.json").write_text(json.dumps(final))
    with pytest.raises(NotMeasured, match="first residual point.*L0.pre"):
        load_probes("noisy")(RunData(out))
