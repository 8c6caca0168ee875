# %% [markdown]
# # Claim 7: the circuits for generalization and memorization overlap
#
# Edge attribution patching on clean and on noisy training examples; the top 10% of edges of
# each is its circuit. Overlap (IoU, weighted Jaccard) against random edge sets of the same
# size, and each circuit's faithfulness (the share of the metric it recovers alone).
#
#     python experiments/claim7_circuits.py [RUN_DIR ...]

# %%
import pandas as pd

from _common import analysis_figure, run_dirs

pd.set_option("display.width", 200)
rows = []
for run_dir in run_dirs():
    s = analysis_figure(run_dir, "circuits", "Circuits")["summary"]
    rows.append({"run": run_dir.name, **s["overlap"],
                 "clean_faithfulness": s["clean"]["faithfulness"], "noisy_faithfulness": s["noisy"]["faithfulness"]})
    print(f"== {run_dir.name}: top noisy-circuit edges")
    print(pd.DataFrame(s["noisy"]["top_edges"]).round(4).to_string(index=False))
print(pd.DataFrame(rows).round(3).to_string(index=False))
