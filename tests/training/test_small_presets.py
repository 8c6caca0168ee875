"""The phenomenon on the small presets (slow: about 3 and 11 minutes on 2 cores).

Acceptance of the training issue: test accuracy >= 0.95, clean training accuracy >= 0.99, noisy
memorization >= 0.90, and generalization (test >= 0.9) before memorization (noisy >= 0.5).
"""

import pytest

from memlens import make_run_config, train

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_small_preset_generalizes_then_memorizes(tmp_path, task):
    result = train(make_run_config(task, "small", seed=0), tmp_path / task, progress=False)
    final = result.final_metrics
    print(task, final, result.phases, f"{result.wall_seconds:.0f} s")
    assert final["test_acc"] >= 0.95
    assert final["train_clean_acc"] >= 0.99
    assert final["noisy_memorized_acc"] >= 0.90
    assert result.phases["generalized_first"]
    # wall time (about 3 and 11 minutes alone on 2 cores) is printed, not asserted: CI machines
    # share cores, and a timing assertion would fail on load rather than on behaviour
