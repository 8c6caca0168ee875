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

from _common import figure_dir, run_dirs
from memlens.analysis.registry import load_analysis
from memlens.viz import figures

pd.set_option("display.width", 200)
for run_dir in run_dirs():
    data = load_analysis(run_dir, "neurons")
    s = data["summary"]
    figures.save(figures.neurons(data, title=f"Neuron outliers, {run_dir.name}"),
                 figure_dir() / f"neurons-{run_dir.name}", png=False)
    print(f"== {run_dir.name}: layer {s['layers']}, {s['heuristics']['n_heuristic']} of "
          f"{s['heuristics']['n_neurons']} neuron-positions are heuristic")
    print(pd.DataFrame(s["heuristics"]["counts"]).T.to_string())
    print("outliers:", s["outliers"])
    if s["patching"]:
        print(pd.DataFrame(s["patching"]).round(3).to_string(index=False))
