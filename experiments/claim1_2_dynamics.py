# %% [markdown]
# # Claims 1 and 2: generalize first, then memorize the noise
#
# The four accuracy curves of each run (clean training, noisy examples scored against their
# memorized label and against their true label, test), the steps where test accuracy reaches
# 0.9 and noisy memorization 0.5 and 0.9, and the final accuracies.
#
#     python experiments/claim1_2_dynamics.py [RUN_DIR ...]      # or open with jupytext

# %%
import json

import pandas as pd

from _common import figure_dir, run_dirs
from memlens.training.run import read_metrics
from memlens.viz import figures

rows = []
for run_dir in run_dirs():
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = pd.DataFrame(read_metrics(run_dir))
    figures.save(figures.dynamics(metrics, summary["phases"], title=run_dir.name),
                 figure_dir() / f"dynamics-{run_dir.name}", png=False)
    rows.append({"run": run_dir.name, **summary["phases"],
                 **{k: round(v, 4) for k, v in summary["final_metrics"].items() if k.endswith("_acc")}})

# %%
table = pd.DataFrame(rows)
print(table.to_string(index=False))
print(f"figures: {figure_dir()}")
