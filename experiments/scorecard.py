# %% [markdown]
# # The claims scorecard
#
# Every claim's parts: per-seed values, the mean and the hierarchical-bootstrap 95% interval,
# the threshold, the control beside each statistic, the pure-memorizer reference where one is
# among the runs, and the verdicts (docs/claims.md), as `memlens reproduce` writes claims.md.
#
#     python experiments/scorecard.py [RUN_DIR ...]

# %%
from _common import run_dirs
from memlens.claims import score_run_dirs, to_markdown

print(to_markdown(score_run_dirs(run_dirs())))
