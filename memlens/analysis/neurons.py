"""Neuron activation tables: MLP activations at chosen positions for many examples.

The table is the input of the neuron analyses (heuristic classification, outlier scoring):
``acts[example, layer, position, neuron]`` of ``blocks.L.mlp.hook_post``, by default at the
positions that predict the answer tokens. It is computed in chunks of ``chunk_size`` sequences,
caching only the MLP hooks, only the positions asked for, and stopping the forward pass after
the last layer asked for, so memory stays at the table plus one chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from memlens.backend import Model
from memlens.analysis.common import (
    AnalysisError, Result, check_examples, check_layers, check_positions, chunks, model_device,
)
from memlens.tasks.base import Examples


@dataclass
class NeuronTable(Result):
    acts: Float[Tensor, "n layer pos d_mlp"]
    layers: list[int]
    positions: list[int]
    is_noisy: Tensor

    def mean(self, noisy: bool | None = None) -> Float[Tensor, "layer pos d_mlp"]:
        """Mean activation over all examples, or over the noisy (True) or clean (False) ones."""
        acts = self.acts if noisy is None else self.acts[self.is_noisy == noisy]
        if len(acts) == 0:
            raise AnalysisError(f"no {'noisy' if noisy else 'clean'} examples in this table")
        return acts.mean(0)

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, position, neuron): mean and std of the activation and the share
        of examples where it is active (> 0), for clean and for noisy examples."""
        rows = []
        for group, mask in (("clean", ~self.is_noisy), ("noisy", self.is_noisy)):
            if not mask.any():
                continue
            acts = self.acts[mask]
            mean, std, active = acts.mean(0), acts.std(0) if len(acts) > 1 else torch.zeros_like(acts[0]), (acts > 0).float().mean(0)
            li, pi, ni = torch.meshgrid(*(torch.arange(s) for s in mean.shape), indexing="ij")
            rows.append(pd.DataFrame({
                "group": group, "layer": torch.tensor(self.layers)[li.flatten()].numpy(),
                "position": torch.tensor(self.positions)[pi.flatten()].numpy(), "neuron": ni.flatten().numpy(),
                "mean": mean.flatten().numpy(), "std": std.flatten().numpy(), "active": active.flatten().numpy(),
            }))
        return pd.concat(rows, ignore_index=True)

    def summary(self) -> dict:
        return {"n": len(self.acts), "n_noisy": int(self.is_noisy.sum()), "layers": self.layers,
                "positions": self.positions, "d_mlp": self.acts.shape[-1]}

    @staticmethod
    def render(data: dict, layer: int | None = None):
        """Mean activation per neuron and position at ``layer`` (default the last), clean
        against noisy examples."""
        import plotly.express as px

        frame = pd.DataFrame(data["frame"])
        layers = data["summary"]["layers"]
        layer = layers[-1] if layer is None else layer
        if layer not in layers:
            raise AnalysisError(f"layer {layer} is not in this table (layers {layers})")
        part = frame[frame["layer"] == layer]
        groups = [g for g in ("clean", "noisy") if (part["group"] == g).any()]
        panels = [part[part["group"] == g].pivot(index="position", columns="neuron", values="mean").values
                  for g in groups]
        fig = px.imshow(np.stack(panels), facet_col=0, aspect="auto",
                        y=[str(p) for p in data["summary"]["positions"]],
                        labels={"x": "neuron", "y": "position"}, color_continuous_scale="Viridis")
        for i, name in enumerate(groups):
            fig.layout.annotations[i].text = f"{name}: mean activation, layer {layer}"
        return fig

    def figure(self, layer: int | None = None):
        return self.render(self.to_json(), layer)


@torch.no_grad()
def neuron_table(model: Model, examples: Examples, *, layers: list[int] | None = None,
                 positions: list[int] | None = None, chunk_size: int = 1024) -> NeuronTable:
    """MLP activations (``mlp.hook_post``) of ``examples`` at ``layers`` x ``positions``.

    ``positions`` defaults to the positions that predict the answer tokens.

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=0)
    >>> table = neuron_table(model, task.generate(0).train[:50], layers=[1])
    >>> tuple(table.acts.shape)
    (50, 1, 3, 128)
    """
    check_examples(model, examples)
    layers = check_layers(model, layers)
    n_pos = examples.tokens.shape[1]
    positions = check_positions(n_pos, examples.answer_pos.tolist() if positions is None else positions)
    if chunk_size < 1:
        raise AnalysisError(f"chunk_size={chunk_size} is invalid: expected an integer >= 1")
    names = [f"blocks.{layer}.mlp.hook_post" for layer in layers]
    wanted = set(names)
    stop = max(layers) + 1
    device = model_device(model)
    index = torch.tensor(positions, device=device)
    out = torch.empty(len(examples), len(layers), len(positions), model.cfg.d_mlp)
    for part in chunks(len(examples), chunk_size):
        _, cache = model.run_with_cache(examples.tokens[part].to(device), names_filter=lambda n: n in wanted,
                                        stop_at_layer=stop if stop < model.cfg.n_layers else None,
                                        return_type=None)
        out[part] = torch.stack([cache[name][:, index] for name in names], 1).cpu()
        del cache
    return NeuronTable(acts=out, layers=layers, positions=positions, is_noisy=examples.is_noisy.clone())
