# %% [markdown]
# # Claim 3: memorized examples still compute the intermediate results
#
# The logit lens (where the noisy label takes over at the first answer slot, and how well the
# true answer is read there on noisy against held-out clean examples) and, per intermediate, the
# probe at its best eligible site with the controls (majority class, shuffled targets, the
# untrained model), then the scorecard's parts for claim 3.
#
#     python experiments/claim3_readout.py [RUN_DIR ...]

# %%
import pandas as pd

from _common import analysis_figure, parts_table, run_dirs

pd.set_option("display.width", 220)
for run_dir in run_dirs():
    lens = analysis_figure(run_dir, "logit_lens", "Logit lens")["summary"]
    probes = analysis_figure(run_dir, "probes", "Probes")["summary"]
    print(f"== {run_dir.name}: the noisy label takes over at {lens['first_slot']['takeover_point']}; "
          f"probes at {probes['allowed_points']}")
    table = pd.DataFrame([{"target": t["label"], "point": t["site"]["point"], "position": t["site"]["position"],
                           **{f"acc {g}": v for g, v in t["accuracy"].items()}, **t["controls"]}
                          for t in probes["targets"]])
    print(table.round(3).to_string(index=False))

# %%
print(parts_table([3]).to_string(index=False))
