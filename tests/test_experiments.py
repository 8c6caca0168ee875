"""Every experiments/ script runs on a tiny run, as a script and as a notebook (jupytext +
nbclient, a real Jupyter kernel), and writes its figures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SCRIPTS = sorted(p.name for p in EXPERIMENTS.glob("*.py") if not p.name.startswith("_"))


def test_there_is_a_script_per_claim():
    assert {"claim1_2_dynamics.py", "claim3_readout.py", "claim4_interventions.py",
            "claim5_encoding.py", "claim6_neurons.py", "claim7_circuits.py", "scorecard.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_experiment_runs_on_a_tiny_run(script, tiny_run, tmp_path):
    env = {**os.environ, "MEMLENS_FIGURES": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(EXPERIMENTS / script), str(tiny_run)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip()
    if script.startswith("claim"):
        figures = list(tmp_path.glob("*.html"))
        assert figures and all(f.stat().st_size > 1_000_000 for f in figures)  # plotly.js inlined


@pytest.mark.parametrize("script", SCRIPTS)
def test_experiment_runs_as_a_notebook(script, tiny_run, tmp_path, monkeypatch):
    import jupytext
    import nbclient

    # The kernel inherits this environment; runs are chosen the notebook way, by MEMLENS_RUNS.
    monkeypatch.setenv("MEMLENS_RUNS", str(tiny_run))
    monkeypatch.setenv("MEMLENS_FIGURES", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = jupytext.read(EXPERIMENTS / script)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert code_cells and notebook.cells[0].cell_type == "markdown", "percent format expected (# %% [markdown] first)"
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(EXPERIMENTS)}}).execute()
    outputs = [o for c in code_cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") in ("stream", "execute_result", "display_data") for o in outputs)
    if script.startswith("claim"):
        assert list(tmp_path.glob("*.html"))
