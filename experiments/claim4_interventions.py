# %% [markdown]
# # Claim 4: memorization depends on the reasoning
#
# For each intermediate: the residual stream is patched from a *changing* and from a
# *preserving* counterfactual that edit the same input tokens; the site is where that difference
# moves clean answers most. On noisy examples, recall after the preserving patch minus after the
# changing one is what the memorized label owes to the intermediate beyond the input's identity.
# Then INLP at the same site (a diagnostic) and the scorecard's parts for claim 4.
#
#     python experiments/claim4_interventions.py [RUN_DIR ...]

# %%
import pandas as pd

import memlens
from _common import analysis_figure, parts_table, run_dirs
from memlens.analysis.runner import load_analysis

pd.set_option("display.width", 220)
for run_dir in run_dirs():
    patching = analysis_figure(run_dir, "patching", "Changing vs preserving patches")["summary"]
    rows = [{"intermediate": label, **s["site"], "noisy n": s["noisy"]["n"],
             "noisy specific loss": s["noisy"]["specific_loss"],
             "clean specific loss": (s.get("clean_heldout") or {}).get("specific_loss")}
            for label, s in patching.items()]
    print(f"== {run_dir.name}")
    print(pd.DataFrame(rows).round(3).to_string(index=False))
    table = pd.DataFrame(load_analysis(run_dir, "interventions")["frame"])
    print(table.round(3).to_string(index=False))

# %% [markdown]
# The composable API on one run: the same comparison live, for the first intermediate the task
# declares for claim 4, on 200 noisy and 200 + 200 clean training examples.

# %%
run = memlens.load_run(run_dirs()[0])
name, column = run.task.entries(claim=4)[0]
clean = run.splits["train_clean"]
result = memlens.intermediate_dependence(run.model, run.splits["train_noisy"][:200], name, column,
                                         clean_select=clean[:200], clean_heldout=clean[200:400])
print(result.site, result.summary()["noisy"]["specific_loss"])
print(parts_table([4]).to_string(index=False))
