"""The Python blocks of docs/quickstart.md run, in order, as one script (in a scratch directory)."""

import os
import re
import subprocess
import sys
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[1] / "docs" / "quickstart.md"


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
