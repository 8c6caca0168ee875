# %% [markdown]
# # Claim 6: memorization rides on shifted heuristic neurons ("outlier heuristics")
#
# For the last layer's neurons at the answer-predicting positions: which feature each one follows
# on clean examples (an arithmetic heuristic, or the visible answer token), which ones shift on
# noisy examples (outliers, in units of the neuron's clean standard deviation), their heuristic
# share against neurons of the same variance, the pre-memorization null, and what resetting the
# outliers on held-out noisy examples does, beside as many other heuristic neurons.
#
#     python experiments/claim6_neurons.py [RUN_DIR ...]

# %%
import pandas as pd

from _common import analysis_figure, parts_table, run_dirs

pd.set_option("display.width", 220)
for run_dir in run_dirs():
    s = analysis_figure(run_dir, "neurons", "Neuron outliers")["summary"]
    print(f"== {run_dir.name}: {s['heuristics']['n_heuristic']} of {s['heuristics']['n_neurons']} "
          f"neuron-positions are heuristic; outliers {s['outliers']}; null {s['null'] or s['null_note']}")
    if s["patching"]:
        print(pd.DataFrame(s["patching"]["table"]).round(3).to_string(index=False))

# %%
print(parts_table([6]).to_string(index=False))
