# %% [markdown]
# # One memorized noisy example, end to end
#
# A noisy training example that the model answers with its noisy label: where does its true
# answer form, where does the noisy label take over, which heads and neurons write the label,
# and what happens to its recall when an intermediate (a column sum, a carry; THR: the bridge) is
# patched in from a counterfactual that changes it and from one that edits the same tokens but
# preserves it? `memlens.explain` shows every panel inline, offline; `memlens explore RUN`
# writes the same panels for many examples into one page (docs/explore.md).
#
#     python experiments/explore_one_example.py [RUN_DIR]

# %%
import pandas as pd

import memlens
from _common import figure_dir, run_dirs
from memlens.analysis.per_example import greedy_answers

pd.set_option("display.width", 200)
run = memlens.load_run(run_dirs()[0])
noisy = run.splits["train_noisy"]
memorized = (greedy_answers(run.model, noisy) == noisy.labels).all(-1).nonzero().flatten().tolist()
index = memorized[0] if memorized else 0
print(f"{run.path.name}: {len(memorized)} of {len(noisy)} noisy examples memorized; showing "
      f"noisy-{index}" + ("" if memorized else " (none is memorized: the first noisy example)"))

# %% [markdown]
# The example explained: tokens, label, true label and the model's own answer; the logit lens;
# attention patterns; direct logit attribution; patching. Pick an answer slot with its buttons.

# %%
view = memlens.explain(run, "train_noisy", index)
print(view.summary())
view

# %% [markdown]
# The same numbers as tables. The logit lens at the first slot whose label is not the true
# label: the point where the true label is most probable, and the point from which the noisy
# label stays ahead of it.

# %%
lens = view.to_frame("lens")
differs = [s for s, (a, b) in enumerate(zip(view.example["l"], view.example["y"])) if a != b]
slot = differs[0] if differs else 0
table = lens[lens["slot"] == slot].pivot(index="point", columns="target", values="prob")
table = table.loc[list(dict.fromkeys(lens["point"]))]
print(table.round(3).to_string())
if "noisy" in table:
    ahead = (table["noisy"] > table["true"]).tolist()
    takeover = next((table.index[i] for i in range(len(ahead)) if all(ahead[i:])), None)
    print(f"slot {slot}: the true label peaks at {table['true'].idxmax()} "
          f"({table['true'].max():.3f}); the noisy label leads from {takeover}")

# %% [markdown]
# Which heads and neurons write the label rather than the true label at that slot (direct
# logit attribution, in logits).

# %%
heads = view.to_frame("heads")
heads = heads[heads["slot"] == slot].assign(label_minus_true=lambda f: f["to_label"] - f["to_true_label"])
print(heads.sort_values("label_minus_true", ascending=False).head(5).round(2).to_string(index=False))
neurons = view.to_frame("neurons")
print(neurons[neurons["slot"] == slot].round(2).to_string(index=False))

# %% [markdown]
# Recall of the label (1: still answered) and its log-probability after patching each
# intermediate from a changing and from a preserving counterfactual. A memorized label that
# rides on the computation drops more under the changing patch than under the preserving one.

# %%
print(view.to_frame("patching").round(2).to_string(index=False))

# %% [markdown]
# The explorer page for this run: the first examples of each group and this one; open it
# offline, `#example=noisy-N` selects an example.

# %%
from memlens.viz.explore import write_explorer  # noqa: E402

page = write_explorer(run.path, figure_dir() / f"explore-{run.path.name}.html", per_group=20,
                      examples=f"noisy-{index}")
print(f"{page} ({page.stat().st_size / 1e6:.1f} MB): open {page.name}#example=noisy-{index}")
