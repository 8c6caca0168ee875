"""Analyses of one fixed set of weights, compared across TransformerLens versions.

``weights.safetensors`` (a tiny FDA model, every parameter perturbed so that no bias is zero) and
``reference.json`` (what TransformerLens 3.9 computes from it) are committed beside this file.
tests/test_cross_version.py recomputes everything on the installed version and compares: under
TransformerLens 4.x that is the cross-version check, under 3.9 a check that nothing drifted.
Regenerate both files, under TransformerLens 3.9 only, with

    .venv/bin/python -m tests.cross_version.reference
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from memlens import backend
from memlens.analysis import fit_probes, logit_lens, neuron_table, patch_grid
from memlens.analysis.circuits import circuit_logits, edge_attribution
from memlens.models import ModelConfig, build_model
from memlens.tasks import make_task
from memlens.training.checkpoint import load_weights, save_weights
from memlens.training.fast_forward import FastForward
from tests.analysis.helpers import label_logprob_metric

HERE = Path(__file__).parent
WEIGHTS, REFERENCE = HERE / "weights.safetensors", HERE / "reference.json"
CONFIG = ModelConfig(n_layers=2, d_model=32, n_heads=2)


def setup():
    """The task, its data, and a model (random weights of this version; load WEIGHTS into it)."""
    task = make_task("fda", preset="tiny")
    return task, task.generate(seed=0), build_model(CONFIG, task, seed=0).eval()


def compute(model, task, data) -> dict[str, list]:
    """Every figure compared across versions, as nested lists."""
    clean, corrupt = data.test[:16], data.test[16:32]
    metric = label_logprob_metric(clean)
    out = {}
    with torch.no_grad():
        out["logits"] = model(clean.tokens[:8])
        out["fast_forward_logits"] = FastForward(model)(clean.tokens[:8])
    for kind in ("resid_pre", "resid_mid", "z", "mlp_post"):
        layers = [model.cfg.n_layers - 1] if kind == "mlp_post" else None
        out[f"patch_{kind}"] = patch_grid(model, clean.tokens, corrupt.tokens, metric, hook=kind,
                                          layers=layers, positions=[4, 9])
    scores = edge_attribution(model, clean.tokens, corrupt.tokens, metric)
    out["edge_scores"] = scores.scores
    out["circuit_logits"] = circuit_logits(model, clean.tokens, corrupt.tokens, scores.top(10))
    out["neuron_mean"] = neuron_table(model, data.train[:64]).acts.mean(0)
    lens = logit_lens(model, {"test": data.test[:64]}).to_frame()
    out["logit_lens"] = torch.tensor(lens.select_dtypes("number").to_numpy(dtype=float))
    probes = fit_probes(model, data.train[:300], {"test": data.test[:100]}, ["carry"],
                        controls=False).to_frame()
    out["probe_accuracy"] = torch.tensor(probes["accuracy"].to_numpy(dtype=float))
    return {k: v.detach().cpu().double().tolist() for k, v in out.items()}


def main() -> None:
    if backend.BACKEND != "hooked":
        raise SystemExit("the reference is TransformerLens 3.9's: run this under .venv")
    task, data, model = setup()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    save_weights(WEIGHTS, model, step=0, fingerprint="cross-version")
    load_weights(WEIGHTS, model)  # what the test does, so both see the stored float32 values
    reference = {"transformer_lens": backend.TL_VERSION, **compute(model, task, data)}
    REFERENCE.write_text(json.dumps(reference))
    print(f"wrote {WEIGHTS.name} and {REFERENCE.name} ({backend.describe()})")


if __name__ == "__main__":
    main()
