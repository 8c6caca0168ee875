"""Claim 2's per-example outcomes, with the noise-free baseline's beside them."""

import numpy as np
import torch

from memlens.analysis.behaviour import answered, behaviour


def test_baseline_outcomes_include_neighbour_accuracy(fda_tiny):
    """The baseline's neighbour accuracy is kept: the control for neighbours that memorization
    damages without copying the noisy label (docs/results/reproduce-small-gpu-old-presets.md)."""
    from memlens.models import ModelConfig, build_model

    task, model, data = fda_tiny
    s = data.splits
    neighbours = task.neighbours(data, s["train_noisy"], 0)
    other = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=1).eval()
    res = behaviour(model, s["train_noisy"], s["test"], neighbours, baseline=other)
    assert set(res.baseline) == {"test_correct", "neighbour_leak", "neighbour_accuracy"}
    assert torch.equal(res.baseline["neighbour_accuracy"], answered(other, neighbours.examples))
    assert torch.equal(res.outcomes["neighbour_accuracy"], answered(model, neighbours.examples))
    summary = res.summary()
    assert np.isclose(summary["baseline"]["means"]["neighbour_accuracy"],
                      float(res.baseline["neighbour_accuracy"].float().mean()))
