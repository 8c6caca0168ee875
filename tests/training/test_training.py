import json

import pytest
import torch

from memlens import load_run, make_run_config, train
from memlens.cli import main
from memlens.config import ConfigError
from memlens.training.metrics import evaluate
from memlens.training.run import RunDirError

TINY_STEPS = 60


def tiny(task="fda", **overrides):
    base = {"train.steps": TINY_STEPS, "train.eval_every": 20, "train.resume_every": 25}
    base.update(overrides)
    return make_run_config(task, "tiny", seed=0, overrides=base)


@pytest.fixture(scope="module")
def fda_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fda"
    train(tiny(), out, device="cpu", progress=False)
    return out


def test_loss_falls_and_metrics_well_formed(fda_run):
    rows = [json.loads(line) for line in (fda_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == tiny().train.eval_steps()
    for r in rows:
        for key in ("step", "train_clean_acc", "noisy_memorized_acc", "noisy_true_acc", "test_acc",
                    "train_clean_loss", "test_loss", "wall_s"):
            assert key in r
        for key in ("train_clean_acc", "noisy_memorized_acc", "noisy_true_acc", "test_acc"):
            assert 0.0 <= r[key] <= 1.0
    assert rows[-1]["train_clean_loss"] < 0.7 * rows[0]["train_clean_loss"]
    assert all(b["wall_s"] >= a["wall_s"] for a, b in zip(rows, rows[1:]))


def test_load_run_gives_eval_model_and_splits(fda_run):
    run = load_run(fda_run)
    assert not run.model.training
    cfg = run.config.task_config
    assert len(run.splits["train_noisy"]) == round(cfg["noise_rate"] * cfg["n_train"])
    assert len(run.splits["train_clean"]) + len(run.splits["train_noisy"]) == cfg["n_train"]
    assert len(run.splits["test"]) == cfg["n_test"]
    assert list(run.metrics["step"])[-1] == TINY_STEPS
    # the loaded model reproduces the metrics recorded at the end of training
    again = evaluate(run.model, {"test": run.splits["test"]})
    assert again["test_acc"] == pytest.approx(run.metrics["test_acc"].iloc[-1], abs=1e-9)
    assert run.model.to_str_tokens(run.splits["test"].tokens[0])[0] == "<bos>"


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_resume_reaches_identical_weights(tmp_path, task):
    cfg = tiny(task)
    train(cfg, tmp_path / "straight", device="cpu", progress=False)

    def stop_at_37(step, row):
        if step == 37:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "resumed", device="cpu", progress=False, callback=stop_at_37)
    assert not (tmp_path / "resumed" / "final.safetensors").exists()
    train(cfg, tmp_path / "resumed", device="cpu", progress=False, resume=True)
    a = load_run(tmp_path / "straight").model.state_dict()
    b = load_run(tmp_path / "resumed").model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    read = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert strip(read(tmp_path / "straight")) == strip(read(tmp_path / "resumed"))


def test_refuses_existing_run_without_resume(fda_run):
    before = (fda_run / "final.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="already holds a finished run.*--resume"):
        train(tiny(), fda_run, device="cpu", progress=False)
    with pytest.raises(RunDirError, match=r"different run \(differs in seed"):
        train(make_run_config("fda", "tiny", seed=1, overrides={"train.steps": TINY_STEPS,
              "train.eval_every": 20, "train.resume_every": 25}), fda_run, progress=False)
    assert (fda_run / "final.safetensors").read_bytes() == before


def test_refuses_non_run_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a memlens run directory"):
        train(tiny(), tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_truncated_checkpoint_and_missing_files(tmp_path, fda_run):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(fda_run, copy)
    final = copy / "final.safetensors"
    final.write_bytes(final.read_bytes()[:1000])
    with pytest.raises(RunDirError, match="truncated or unreadable"):
        load_run(copy)
    final.unlink()
    with pytest.raises(RunDirError, match="missing final.safetensors"):
        load_run(copy)
    with pytest.raises(RunDirError, match="does not exist"):
        load_run(tmp_path / "nowhere")


def test_checkpoint_of_other_config_refused(tmp_path, fda_run):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(fda_run, copy)
    other = tmp_path / "other"
    train(tiny(**{"model.d_model": 32}), other, device="cpu", progress=False)
    shutil.copy(other / "final.safetensors", copy / "final.safetensors")
    with pytest.raises(RunDirError, match="another configuration"):
        load_run(copy)


@pytest.mark.parametrize("override,needle", [
    ("train.steps=0", "steps=0"),
    ("train.batch_size=0", "batch_size=0"),
    ("train.lr=-0.001", "lr=-0.001"),
    ("train.schedule=step", "schedule='step'"),
    ("model.n_heads=3", "n_heads=3"),
    ("task.noise_rate=1.2", "noise_rate=1.2"),
    ("optim.lr=1", "override 'optim.lr'"),
    ("train.nope=1", "no field 'nope'"),
])
def test_cli_refuses_bad_hyperparameters(tmp_path, capsys, override, needle):
    code = main(["train", "fda", "--preset", "tiny", "--out", str(tmp_path / "r"), "--set", override])
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_train_prints_run_and_metrics(tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["train", "thr", "--preset", "tiny", "--steps", "30", "--out", str(out), "--no-progress",
                 "--noise-rate", "0.1"])
    assert code == 0
    text = capsys.readouterr().out
    assert f"run: {out}" in text and "noisy_memorized_acc" in text
    assert json.loads((out / "config.json").read_text())["run"]["task_config"]["noise_rate"] == 0.1
    assert main(["train", "thr", "--preset", "tiny", "--steps", "30", "--out", str(out),
                 "--noise-rate", "0.1"]) == 2


def test_bad_preset_refused():
    with pytest.raises(ConfigError, match="preset='medium'"):
        make_run_config("fda", "medium")


def test_auto_precision_is_recorded_and_kept_on_resume(tmp_path):
    """``auto`` resolves on the machine that starts the run, is written into config.json and
    summary.json, and a resumed run keeps the precision it started in."""
    from memlens.training.trainer import resolve_precision

    cfg = make_run_config("fda", "tiny", overrides={"train.steps": 40, "train.precision": "auto",
                                                     "train.resume_every": 10})
    here = resolve_precision("auto", "cpu")
    assert here in ("bf16", "fp32")

    def stop_at_20(step, row):
        if step == 20:
            raise Interrupt

    run = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(cfg, run, device="cpu", progress=False, callback=stop_at_20)
    header = json.loads((run / "config.json").read_text())
    assert header["precision"] == here and header["run"]["train"]["precision"] == "auto"
    other = "fp32" if here == "bf16" else "bf16"  # as if started on another machine
    (run / "config.json").write_text(json.dumps({**header, "precision": other}))
    train(cfg, run, device="cpu", progress=False, resume=True)
    assert json.loads((run / "summary.json").read_text())["precision"] == other
