# %% [markdown]
# # Claims 1 and 2: generalize first, then memorize the noise
#
# The four accuracy curves of each run (clean training, noisy examples scored against their
# memorized label and against their true label, test), the phase steps, the final accuracies,
# then the scorecard's parts for claims 1 and 2 (docs/claims.md): the order of the phases, noisy
# examples answered with their true label first, final recall, test accuracy against a noise-free
# baseline (when the runs were analyzed with one) and the leak to held-out neighbours.
#
#     python experiments/claim1_2_dynamics.py [RUN_DIR ...]      # or open with jupytext

# %%
import pandas as pd

from _common import figure_dir, parts_table, run_dirs
from memlens.training.run import read_metrics, read_summary
from memlens.viz import figures

rows = []
for run_dir in run_dirs():
    summary = read_summary(run_dir)
    metrics = pd.DataFrame(read_metrics(run_dir))
    figures.save(figures.dynamics(metrics, summary["phases"], title=run_dir.name),
                 figure_dir() / f"dynamics-{run_dir.name}", png=False)
    rows.append({"run": run_dir.name, **summary["phases"],
                 **{k: round(v, 4) for k, v in summary["final_metrics"].items() if k.endswith("_acc")}})

# %%
pd.set_option("display.width", 220)
print(pd.DataFrame(rows).to_string(index=False))
print(parts_table([1, 2]).to_string(index=False))
print(f"figures: {figure_dir()}")
