"""Shared set-up of the experiment scripts: which runs to read and where figures go.

Runs come from the command line (``python experiments/X.py RUN_DIR ...``) or from
``MEMLENS_RUNS`` (comma-separated; the way to choose runs in a notebook), else the small-preset
reproduction's default directory.
Figures are written as self-contained HTML to ``MEMLENS_FIGURES`` (default experiments/figures).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_RUNS = [f"runs/reproduce-small/{t}-small-s{s}" for t in ("fda", "thr") for s in range(3)]


def _in_notebook() -> bool:
    """True inside a Jupyter kernel, whose sys.argv holds the kernel's own arguments
    (``-f /path/kernel-....json``), not run directories."""
    return "ipykernel" in sys.modules


def run_dirs() -> list[Path]:
    args = [] if _in_notebook() else [a for a in sys.argv[1:] if not a.startswith("-")]
    if not args and os.environ.get("MEMLENS_RUNS"):
        args = os.environ["MEMLENS_RUNS"].split(",")
    dirs = [Path(a) for a in (args or DEFAULT_RUNS)]
    missing = [str(d) for d in dirs if not (d / "config.json").exists()]
    if missing:
        sys.exit(f"not memlens run directories: {', '.join(missing)} "
                 "(run `memlens reproduce` or pass RUN_DIR arguments)")
    return dirs


def figure_dir() -> Path:
    out = Path(os.environ.get("MEMLENS_FIGURES", Path(__file__).resolve().parent / "figures"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def analysis_figure(run_dir: Path, name: str, title: str) -> dict:
    """Load ``RUN/analysis/<name>.json``, save its figure (the analysis' own renderer) as
    ``<figure_dir>/<name>-<run>.html`` (underscores as hyphens), and return the loaded data."""
    from memlens.analysis.runner import load_analysis
    from memlens.viz import figures

    data = load_analysis(run_dir, name)
    figure = figures.analysis_figure(name, data)
    figure.update_layout(title=f"{title}, {run_dir.name}: {figure.layout.title.text or ''}")
    figures.save(figure, figure_dir() / f"{name.replace('_', '-')}-{run_dir.name}", png=False)
    return data


def parts_table(claims: list[int]):
    """The scorecard rows of ``claims`` over the runs given (seeds of a task together) as a
    DataFrame: part, task, role, per-seed values, mean, interval, threshold, control, verdict."""
    import pandas as pd

    from memlens.claims import score_run_dirs

    rows = score_run_dirs(run_dirs(), only=claims)
    table = pd.DataFrame(rows)
    table["part"] = table["claim"].astype(str) + table["part"]
    return table[["part", "task", "role", "per_seed", "mean", "ci95", "direction", "threshold",
                  "control", "reference", "verdict"]]
