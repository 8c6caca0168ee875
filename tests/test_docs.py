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


def run_page(page: Path, workdir: Path, min_blocks: int) -> None:
    """Run the page's Python blocks, in order, as one script in ``workdir``; it must succeed."""
    blocks = python_blocks(page.read_text())
    assert len(blocks) >= min_blocks
    script = workdir / f"{page.stem.replace('-', '_')}.py"
    script.write_text("\n\n".join(blocks))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_quickstart_runs(tmp_path):
    run_page(QUICKSTART, tmp_path, min_blocks=5)
    run_dir = tmp_path / "runs" / "quickstart-fda"
    for name in ("dynamics.html", "attention.html", "neuron.html", "tokens.html", "report.html"):
        assert (run_dir / name).stat().st_size > 10_000, name
    for name in ("attention.html", "tokens.html"):
        assert "unpkg.com" not in (run_dir / name).read_text()  # drawn offline


def test_own_task_page_runs(tmp_path):
    """docs/own-task.md: a task defined outside the package goes through every analysis."""
    shutil.copytree(DOCS / "examples", tmp_path / "docs" / "examples")
    run_page(DOCS / "own-task.md", tmp_path, min_blocks=3)
    analyses = {p.stem for p in (tmp_path / "runs" / "own-sum3" / "analysis").iterdir()}
    assert {"behaviour", "logit_lens", "probes", "patching", "circuits"} <= analyses
    assert "neurons" not in analyses  # SUM3 declares no heuristic features
    assert (tmp_path / "runs" / "own-sum3" / "report.html").stat().st_size > 10_000
