# %% [markdown]
# # Key numbers of a run's analyses
#
# Prints, from `RUN/analysis/*.json` (written by `memlens analyze RUN`), the figures that the
# readout and causal claims rest on: best probes on clean versus noisy examples with controls,
# where the logit lens reads the true answer and the noisy label on noisy examples, patching
# effects, the intervention table and the encoding concentration.
#
#     .venv/bin/python experiments/analysis_summary.py [RUN_DIR ...]

# %%
import pandas as pd

from _common import run_dirs
from memlens.analysis.runner import load_analysis

pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 20)


def summarize(run_dir: str) -> None:
    print(f"==== {run_dir}")
    probes = pd.DataFrame(load_analysis(run_dir, "probes")["summary"]["best"])
    cols = [c for c in probes.columns if c.endswith(("_acc", "_majority", "_shuffled"))]
    print("-- probes: best point x position per target (selected on held-out clean)")
    print(probes[["target", "point", "position", *cols]].round(3).to_string(index=False))

    lens = load_analysis(run_dir, "logit_lens")["summary"]
    print("-- logit lens on noisy examples (top-1 rate by residual point)")
    print(pd.DataFrame({"true label": lens["noisy_true_top1_by_point"],
                        "noisy label": lens["noisy_label_top1_by_point"]},
                       index=lens["points"]).round(3).T.to_string())
    print(f"true-label probability peaks at {lens['noisy_true_prob_peak_point']} "
          f"({lens['noisy_true_prob_peak']:.3f}); noisy label wins from {lens['noisy_label_wins_from_point']}")

    print("-- patching (counterfactual intermediate, resid_pre): at the internal site that moves "
          "clean answers most, the noisy recall drop")
    for key, s in load_analysis(run_dir, "patching")["summary"].items():
        print(f"{key:16s} site {s.get('internal_site')}: clean moved {s.get('internal_site_clean_moved_rate', float('nan')):.3f}, "
              f"noisy recall drop {s.get('internal_site_noisy_recall_drop', float('nan')):.3f} "
              f"(pairs: clean {s['baseline'].get('clean', {}).get('n')}, noisy {s['baseline'].get('noisy', {}).get('n')}; skipped {s['n_skipped']})")

    print("-- interventions")
    for key, s in load_analysis(run_dir, "interventions")["summary"].items():
        table = pd.DataFrame(s["table"]).set_index("intervention").round(3)
        site = {k: s["settings"][k] for k in ("layer", "position", "inlp_rank")}
        accs = s["settings"].get("inlp_probe_accuracy_before_each_iteration_and_after", [])
        print(f"{key} at {site}; INLP probe accuracy by iteration {[round(a, 3) for a in accs]}")
        print(table.to_string())

    enc = load_analysis(run_dir, "encoding")["summary"]
    print("-- encoding (largest share / normalized entropy; lookup = 1 / 0)")
    for group in ("clean", "noisy"):
        if group in enc:
            g = enc[group]
            print(f"{group}: n={g['n']} largest share {g['mean_largest_share']:.3f}, "
                  f"entropy {g['mean_entropy']:.3f}; groups {({k: round(v, 3) for k, v in g['mean_effect_by_group'].items()})}")


# %%
for run_dir in run_dirs():
    summarize(run_dir)
