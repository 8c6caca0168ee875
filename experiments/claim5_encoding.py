# %% [markdown]
# # Claim 5: memorization is distributed, not a lookup
#
# How much resampling each input lowers the recall of the label, and how concentrated that is
# (largest share; normalized entropy: 1 = spread evenly, 0 = one input decides, as in the
# constructed lookup reference), for noisy against clean examples.
#
#     python experiments/claim5_encoding.py [RUN_DIR ...]

# %%
import pandas as pd

from _common import analysis_figure, run_dirs

rows = []
for run_dir in run_dirs():
    s = analysis_figure(run_dir, "encoding", "Encoding")["summary"]
    for group in ("clean", "noisy"):
        if group in s:
            rows.append({"run": run_dir.name, "group": group, "entropy": s[group]["mean_entropy"],
                         "largest_share": s[group]["mean_largest_share"], "n": s[group]["n"]})
    rows.append({"run": run_dir.name, "group": "lookup reference", **s["lookup_reference"]})
print(pd.DataFrame(rows).round(3).to_string(index=False))
