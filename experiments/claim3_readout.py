# %% [markdown]
# # Claim 3: memorized examples still compute the intermediate results
#
# The logit lens (is the true answer decodable on noisy examples before the final layers switch
# to the memorized label?) and the best linear probe per intermediate on held-out clean against
# noisy examples, with the majority and shuffled-label controls.
#
#     python experiments/claim3_readout.py [RUN_DIR ...]

# %%
import pandas as pd

from _common import analysis_figure, run_dirs

pd.set_option("display.width", 200)
for run_dir in run_dirs():
    lens = analysis_figure(run_dir, "logit_lens", "Logit lens")
    probes = analysis_figure(run_dir, "probes", "Probes")
    best = pd.DataFrame(probes["summary"]["best"])
    cols = [c for c in ("target", "point", "position", "clean_heldout_acc", "noisy_acc",
                        "clean_heldout_majority", "noisy_shuffled") if c in best]
    print(f"== {run_dir.name}: best probe per target")
    print(best[cols].round(3).to_string(index=False))
    s = lens["summary"]
    print(f"noisy examples: true-label probability peaks at {s['noisy_true_prob_peak_point']} "
          f"({s['noisy_true_prob_peak']:.3f}); the noisy label wins from {s['noisy_label_wins_from_point']}")
