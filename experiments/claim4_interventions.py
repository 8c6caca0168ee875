# %% [markdown]
# # Claim 4: intervening on the reasoning hurts recall of memorized labels
#
# From the saved analyses: the patching heatmaps (counterfactual intermediates) and the
# intervention table (mean ablation, INLP, a random subspace of the same rank). Then the same
# kind of measurement live, with `memlens.patch_intermediate` on the loaded model.
#
#     python experiments/claim4_interventions.py [RUN_DIR ...]

# %%
import pandas as pd

import memlens
from _common import analysis_figure, run_dirs
from memlens.analysis.runner import load_analysis, mixed_examples

pd.set_option("display.width", 200)
for run_dir in run_dirs():
    analysis_figure(run_dir, "patching", "Patching")
    table = pd.DataFrame(load_analysis(run_dir, "interventions")["frame"])
    cols = [c for c in ("item", "intervention", "rank", "noisy_memorized_acc", "train_clean_acc",
                        "test_acc") if c in table]
    print(f"== {run_dir.name}: interventions")
    print(table[cols].round(3).to_string(index=False))

# %% [markdown]
# The composable API on one run: patch the intermediate from counterfactual inputs over all
# layers and positions, on 100 clean and 100 noisy training examples.

# %%
run = memlens.load_run(run_dirs()[0])
variable, column = ("bridge_entity", None) if run.config.task == "thr" else ("column_sum", 1)
result = memlens.patch_intermediate(run.model, mixed_examples(run, 100, 100), variable, column=column)
print(result.summary())
