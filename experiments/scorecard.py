# %% [markdown]
# # The claims scorecard
#
# Every claim's statistic per run, the mean and 95% interval across seeds, the threshold and
# the verdict (docs/claims.md), as `memlens reproduce` writes it to claims.md.
#
#     python experiments/scorecard.py [RUN_DIR ...]

# %%
from _common import run_dirs
from memlens.claims import to_markdown
from memlens.reproduce import score_run_dirs

print(to_markdown(score_run_dirs(run_dirs())))
