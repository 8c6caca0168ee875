# %% [markdown]
# # Key numbers of a run's analyses
#
# Prints, from `RUN/analysis/*.json` (written by `memlens analyze RUN`), the figures the claims
# rest on: behaviour (recall, test accuracy, leaks), the takeover point of the noisy label,
# probes at their eligible sites with controls, changing vs preserving patches per intermediate,
# INLP, and the neuron outliers.
#
#     .venv/bin/python experiments/analysis_summary.py [RUN_DIR ...]

# %%
import pandas as pd

from _common import run_dirs
from memlens.analysis.runner import load_analysis

pd.set_option("display.width", 220)
pd.set_option("display.max_columns", 30)


def summarize(run_dir) -> None:
    print(f"==== {run_dir}")
    b = load_analysis(run_dir, "behaviour")["summary"]
    print("-- behaviour:", {k: round(v, 4) for k, v in b["means"].items() if v is not None},
          "baseline:", (b.get("baseline") or {}).get("means"))
    lens = load_analysis(run_dir, "logit_lens")["summary"]
    print("-- the noisy label takes over (first answer slot) at", lens["first_slot"]["takeover_point"])
    probes = load_analysis(run_dir, "probes")["summary"]
    print(pd.DataFrame([{"target": t["label"], **t["site"], **t["accuracy"], "control": t["control"]}
                        for t in probes["targets"]]).round(3).to_string(index=False))
    patching = load_analysis(run_dir, "patching")["summary"]
    print(pd.DataFrame([{"intermediate": k, **v["site"], **{f"noisy {m}": x for m, x in v["noisy"]["mean"].items()}}
                        for k, v in patching.items()]).round(3).to_string(index=False))
    for key, s in load_analysis(run_dir, "interventions")["summary"].items():
        print(f"-- INLP at {key}: removed {s['settings']['removed']}, rank {s['settings']['inlp_rank']}")
        print(pd.DataFrame(s["table"]).round(3).to_string(index=False))
    n = load_analysis(run_dir, "neurons")["summary"]
    print("-- neurons: outliers", n["outliers"], "null", n["null"])


# %%
for run_dir in run_dirs():
    summarize(run_dir)
