# %% [markdown]
# # Claim 5: distributed encoding, not a look-up
#
# Distributed encoding predicts that changing the intermediate with the inputs kept hurts recall
# (5a, the same statistic as 4a) and that changing the inputs with the intermediate kept hurts it
# too (5b); a look-up predicts only the second, a memorizer keyed on the intermediate only the
# first. The per-input resampling effects are shown as a description (they cannot tell a
# look-up keyed on the whole input from a distributed code).
#
#     python experiments/claim5_encoding.py [RUN_DIR ...]

# %%
import pandas as pd

from _common import analysis_figure, parts_table, run_dirs

pd.set_option("display.width", 220)
rows = []
for run_dir in run_dirs():
    patching = analysis_figure(run_dir, "patching", "Changing vs preserving patches")["summary"]
    for label, s in patching.items():
        mean = s["noisy"]["mean"]
        rows.append({"run": run_dir.name, "intermediate": label,
                     "recall, preserving patch": mean["patch_preserve"], "recall, changing patch": mean["patch_change"],
                     "recall, preserving input": mean["input_preserve"]})
    s = analysis_figure(run_dir, "encoding", "Encoding")["summary"]
    print(f"== {run_dir.name}: input-resampling entropy, noisy {s.get('noisy', {}).get('mean_entropy')}")
print(pd.DataFrame(rows).round(3).to_string(index=False))

# %%
print(parts_table([5]).to_string(index=False))
