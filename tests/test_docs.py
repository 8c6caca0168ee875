"""The Python blocks of docs/quickstart.md and docs/own-task.md run, in order, as one script each
(in a scratch directory)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
QUICKSTART = DOCS / "quickstart.md"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_quickstart_runs(tmp_path):
    blocks = python_blocks(QUICKSTART.read_text())
    assert len(blocks) >= 5
    script = tmp_path / "quickstart.py"
    script.write_text("\n\n".join(blocks))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "quickstart-fda"
    for name in ("dynamics.html", "attention.html", "neuron.html", "tokens.html", "report.html"):
        assert (run_dir / name).stat().st_size > 10_000, name
    for name in ("attention.html", "tokens.html"):
        assert "unpkg.com" not in (run_dir / name).read_text()  # drawn offline


def test_own_task_page_runs(tmp_path):
    """docs/own-task.md: a task defined outside the package goes through every analysis."""
    shutil.copytree(DOCS / "examples", tmp_path / "docs" / "examples")
    blocks = python_blocks((DOCS / "own-task.md").read_text())
    assert len(blocks) >= 3
    script = tmp_path / "own_task.py"
    script.write_text("\n\n".join(blocks))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    analyses = {p.stem for p in (tmp_path / "runs" / "own-sum3" / "analysis").iterdir()}
    assert {"behaviour", "logit_lens", "probes", "patching", "circuits"} <= analyses
    assert "neurons" not in analyses  # SUM3 declares no heuristic features
    assert (tmp_path / "runs" / "own-sum3" / "report.html").stat().st_size > 10_000
