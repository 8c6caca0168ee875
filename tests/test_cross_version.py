"""The same weights give the same numbers on both TransformerLens versions.

The weights and TransformerLens 3.9's figures are committed in tests/cross_version/; CI runs this
file under 3.9 and under 4.x (the bridge), so each version is held to 3.9's figures.
"""

import json

import pytest
import torch

from memlens import backend
from memlens.training.checkpoint import load_weights
from tests.cross_version import reference as ref

# Logits to 1e-5 (the bar); gradient-based edge scores and circuit logits to 1e-4;
# probe accuracies to 1%: a probe fitted on features 1e-6 apart can flip one prediction.
TOLERANCE = {"edge_scores": 1e-4, "circuit_logits": 1e-4, "probe_accuracy": 0.01}


@pytest.fixture(scope="module")
def figures():
    task, data, model = ref.setup()
    load_weights(ref.WEIGHTS, model)
    return ref.compute(model, task, data), json.loads(ref.REFERENCE.read_text())


@pytest.mark.parametrize("name", ["logits", "fast_forward_logits", "patch_resid_pre",
                                  "patch_resid_mid", "patch_z", "patch_mlp_post", "edge_scores",
                                  "circuit_logits", "neuron_mean", "logit_lens", "probe_accuracy"])
def test_equals_transformer_lens_3_9(figures, name):
    got, want = figures
    got, want = torch.tensor(got[name]), torch.tensor(want[name])
    assert got.shape == want.shape and want.numel() > 0
    torch.testing.assert_close(got, want, atol=TOLERANCE.get(name, 1e-5), rtol=0,
                               msg=lambda m: f"{name} on {backend.describe()} vs 3.9: {m}")


def test_reference_is_not_trivial():
    want = json.loads(ref.REFERENCE.read_text())
    assert want["transformer_lens"].startswith("3.")
    assert torch.tensor(want["edge_scores"]).abs().max() > 1e-3
    patch = torch.tensor(want["patch_resid_pre"])
    assert patch.max() - patch.min() > 1e-3  # the patches move the metric
