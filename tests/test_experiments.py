"""Every experiments/ script runs as a script on a tiny run and writes its figures."""

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
