# %% [markdown]
# # Claim 7: the circuits for generalization and memorization overlap
#
# Edge attribution on clean and on noisy training examples, the circuits they give, their
# overlap and faithfulness, and the scorecard's parts for claim 7.
#
#     python experiments/claim7_circuits.py [RUN_DIR ...]

# %%
import json

import pandas as pd

from _common import analysis_figure, parts_table, run_dirs

pd.set_option("display.width", 220)
for run_dir in run_dirs():
    s = analysis_figure(run_dir, "circuits", "Circuits")["summary"]
    readable = {k: v for k, v in s.items() if not isinstance(v, (list, dict)) or k in ("overlap",)}
    print(f"== {run_dir.name}: {json.dumps(readable, default=str)[:2000]}")

# %%
print(parts_table([7]).to_string(index=False))
