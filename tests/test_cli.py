import json

import pytest

from memlens.cli import main


def test_data_prints_examples_stats_and_layout(capsys):
    assert main(["data", "fda", "--preset", "tiny", "--show", "2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "n_noisy=100" in out and "hash=" in out and "answer_pos (predicting)" in out
    assert out.count("intermediates:") == 2
    assert "NOISY" in out and "(true:" in out  # a noisy example is shown with its true label


def test_data_export_jsonl_format(tmp_path, capsys):
    path = tmp_path / "thr.jsonl"
    assert main(["data", "thr", "--preset", "tiny", "--export", str(path), "--show", "0"]) == 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 150 + 450 + 100
    assert {r["split"] for r in rows} == {"train", "test"}
    row = next(r for r in rows if r["is_noisy"])
    assert set(row) == {"split", "tokens", "label", "true_label", "is_noisy", "intermediates"}
    assert row["label"] != row["true_label"]
    assert row["tokens"][0] == "<bos>" and row["tokens"][-1] == row["label"][0]
    inter = row["intermediates"]
    assert inter["bridge_entity"].startswith("e") and inter["relation_1"].startswith("r")
    assert not any(r["is_noisy"] for r in rows if r["split"] == "test")


def test_fda_export_digits_as_tokens(tmp_path):
    path = tmp_path / "fda.jsonl"
    assert main(["data", "fda", "--preset", "tiny", "--export", str(path), "--show", "0",
                 "--set", "task.n_train=50", "--set", "task.n_test=10"]) == 0
    row = json.loads(path.read_text().splitlines()[0])
    assert all(isinstance(d, str) for d in row["intermediates"]["answer_digit"])
    assert isinstance(row["intermediates"]["column_sum"][0], int)


@pytest.mark.parametrize("argv,needle", [
    (["data", "fda", "--noise-rate", "1.5"], "noise_rate=1.5"),
    (["data", "fda", "--set", "task.n_digits=0"], "n_digits=0"),
    (["data", "fda", "--set", "model.d_model=4"], "takes task.FIELD only"),
    (["data", "fda", "--set", "n_digits"], "expected SECTION.FIELD=VALUE"),
    (["data", "thr", "--set", "task.phi=30"], "phi=30.0"),
    (["data", "thr", "--set", "task.relations_per_entity=50"], "relations_per_entity=50"),
    (["data", "fda", "--show", "-1"], "--show -1"),
    (["data", "fda", "--set", "task.n_train=99999999", "--set", "task.n_digits=2"], "n_train + n_test"),
])
def test_data_bad_input(capsys, argv, needle):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_unknown_preset_and_task_refused(capsys):
    with pytest.raises(SystemExit):
        main(["data", "fda", "--preset", "huge"])
    with pytest.raises(SystemExit):
        main(["data", "addition"])
    assert "invalid choice" in capsys.readouterr().err


def test_a_preset_the_task_lacks_is_named(tmp_path, capsys):
    # quick is FDA's alone: THR refuses it before any work, naming the presets it has
    assert main(["train", "thr", "--preset", "quick", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "task thr has no 'quick' preset" in err and "small" in err
    assert not (tmp_path / "r").exists()


def test_analyze_bad_input(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path), "--only", "logit_lens,vibes"]) == 2
    assert "unknown analysis ['vibes']" in capsys.readouterr().err


def test_a_config_without_its_run_section_and_a_truncated_checkpoint_are_one_line(tmp_path, capsys):
    from memlens import make_run_config, train

    run = tmp_path / "run"
    train(make_run_config("fda", "tiny", 0, {"train.steps": 5}), run, progress=False)
    good = (run / "config.json").read_text()
    (run / "config.json").write_text(json.dumps({"dataset_hash": "x"}))
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "config.json lacks its run section" in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()
    (run / "config.json").write_text(good)
    final = run / "final.safetensors"
    final.write_bytes(final.read_bytes()[:100])
    assert main(["analyze", str(run), "--only", "behaviour"]) == 2
    err = capsys.readouterr().err
    assert "final.safetensors is truncated or unreadable" in err and "Traceback" not in err


def test_an_analysis_that_does_not_apply_names_the_ones_that_do(tmp_path, capsys):
    from memlens import make_run_config, train

    run = tmp_path / "run"
    train(make_run_config("fda", "tiny", 0, {"train.steps": 5}), run, progress=False)
    assert main(["analyze", str(run), "--only", "fourier"]) == 2
    assert "fourier do(es) not apply to the fda task" in capsys.readouterr().err


def test_the_data_command_imports_neither_transformer_lens_nor_the_analyses():
    """`memlens data` and `import memlens` are quick: the package imports its names on first
    use; the public names still resolve to the functions (also `reproduce`, whose submodule
    shares its name)."""
    import subprocess
    import sys

    code = ("import sys, types; import memlens.cli; "
            "assert 'transformer_lens' not in sys.modules and 'memlens.analysis' not in sys.modules; "
            "import memlens.reproduce; from memlens import reproduce, load_run, patch_grid; "
            "assert not isinstance(reproduce, types.ModuleType) and callable(patch_grid); "
            "assert set(memlens.__all__) <= set(dir(memlens))")
    subprocess.run([sys.executable, "-c", code], check=True)
