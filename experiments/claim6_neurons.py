# %% [markdown]
# # Claim 6: memorization rides on shifted heuristic neurons ("outlier heuristics")
#
# For the last layer's neurons at the answer-predicting positions: which arithmetic heuristic
# (FDA) or slot entity (THR) each one follows on clean examples, which ones shift on noisy
# examples (outliers), what share of those are heuristic neurons, and what happens to noisy
# recall when the outliers are set back to their clean predictions, beside two controls.
#
#     python experiments/claim6_neurons.py [RUN_DIR ...]

# %%
import pandas as pd

from _common import analysis_figure, run_dirs

pd.set_option("display.width", 200)
for run_dir in run_dirs():
    s = analysis_figure(run_dir, "neurons", "Neuron outliers")["summary"]
    print(f"== {run_dir.name}: layer {s['layers']}, {s['heuristics']['n_heuristic']} of "
          f"{s['heuristics']['n_neurons']} neuron-positions are heuristic")
    print(pd.DataFrame(s["heuristics"]["counts"]).T.to_string())
    print("outliers:", s["outliers"])
    if s["patching"]:
        print(pd.DataFrame(s["patching"]).round(3).to_string(index=False))
