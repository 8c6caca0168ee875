"""Batched activation patching on TransformerLens hooks.

One forward pass patches many grid points: the target batch is repeated once per grid point
(stacked along the batch dimension) and each copy gets the source activation at its own
(layer, position[, head or neuron]). Chunks bound the memory. Every forward for layer ``L``
starts at ``L`` from the target run's cached residual stream (``start_at_layer``): the layers
below a patch cannot change, so they are computed once, not once per grid point. Hooks are
attached with ``model.hooks(...)``, which removes them in a ``finally``, also when a hook or the
metric raises.

Direction follows ``transformer_lens.patching``: activations of the *source* run (TL's "clean
cache") are written into the *target* run (TL's "corrupted tokens"), and ``metric(logits)`` is
computed on the patched run. ``patch_grid(model, source=clean, target=corrupted, ...)`` equals
``get_act_patch_resid_pre(model, corrupted, clean_cache, metric)``.
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch
from jaxtyping import Int
from torch import Tensor

from memlens.analysis.common import AnalysisError, check_layers, check_positions, model_device

# hook kind -> (hook name template, component axis name or None)
HOOKS: dict[str, tuple[str, str | None]] = {
    "resid_pre": ("blocks.{layer}.hook_resid_pre", None),
    "resid_mid": ("blocks.{layer}.hook_resid_mid", None),
    "resid_post": ("blocks.{layer}.hook_resid_post", None),
    "attn_out": ("blocks.{layer}.hook_attn_out", None),
    "mlp_out": ("blocks.{layer}.hook_mlp_out", None),
    "z": ("blocks.{layer}.attn.hook_z", "head"),
    "mlp_post": ("blocks.{layer}.mlp.hook_post", "neuron"),
}


def hook_name(kind: str, layer: int) -> str:
    return HOOKS[kind][0].format(layer=layer)


def component_count(model, kind: str) -> int:
    axis = HOOKS[kind][1]
    if axis == "head":
        return model.cfg.n_heads
    if axis == "neuron":
        return model.cfg.d_mlp
    return 0


def check_grid(model, kind: str, layers, positions, components, n_pos: int):
    """Validate a patching grid before any forward pass; returns the resolved lists."""
    if kind not in HOOKS:
        raise AnalysisError(f"unknown hook {kind!r}; valid hooks: {sorted(HOOKS)}")
    layers = check_layers(model, layers)
    positions = check_positions(n_pos, positions)
    n_comp = component_count(model, kind)
    if n_comp == 0:
        if components is not None:
            raise AnalysisError(f"hook {kind!r} has no heads or neurons to index; drop components")
        return layers, positions, [None]
    components = list(range(n_comp)) if components is None else [int(c) for c in components]
    bad = [c for c in components if not 0 <= c < n_comp]
    if bad:
        raise AnalysisError(f"{HOOKS[kind][1]}(s) {bad} out of range: the model has 0..{n_comp - 1}")
    return layers, positions, components


def patch_grid(model, source: Int[Tensor, "n pos"], target: Int[Tensor, "n pos"],
               metric: Callable[[Tensor], Tensor], *, hook: str = "resid_pre",
               layers: list[int] | None = None, positions: list[int] | None = None,
               components: list[int] | None = None, chunk_size: int = 4096,
               source_cache: dict[str, Tensor] | None = None) -> Tensor:
    """Patch ``source`` activations into the ``target`` run at every grid point.

    Returns ``metric`` for every (layer, position[, component]) as a tensor of shape
    ``(len(layers), len(positions)[, len(components)], *metric_shape)``. ``metric`` maps the
    patched run's logits ``(n, pos, vocab)`` to a scalar or any tensor (e.g. per example).
    ``chunk_size`` bounds the number of sequences in one forward pass.

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> ex = task.generate(0).test[:8]
    >>> out = patch_grid(model, ex.tokens, ex.tokens.roll(1, 0), lambda l: l[:, -1].mean())
    >>> tuple(out.shape)
    (1, 10)
    """
    if source.shape != target.shape:
        raise AnalysisError(f"source and target token shapes differ: {tuple(source.shape)} vs "
                            f"{tuple(target.shape)}")
    n, n_pos = target.shape
    layers, positions, components = check_grid(model, hook, layers, positions, components, n_pos)
    device = model_device(model)
    names = sorted({hook_name(hook, layer) for layer in layers})
    if source_cache is None:
        with torch.no_grad():
            _, cache = model.run_with_cache(source.to(device), names_filter=lambda x: x in names,
                                            return_type=None)
        source_cache = {name: cache[name] for name in names}
        del cache
    resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    with torch.no_grad():
        _, cache = model.run_with_cache(target.to(device), names_filter=lambda x: x in resid_names,
                                        return_type=None)
    target_resid = {layer: cache[f"blocks.{layer}.hook_resid_pre"] for layer in layers}
    del cache
    per_forward = max(1, chunk_size // n)
    results: dict[tuple, Tensor] = {}
    for layer in layers:  # one layer per forward, so that it can start at that layer
        grid = list(itertools.product([layer], positions, components))
        for start in range(0, len(grid), per_forward):
            chunk = grid[start:start + per_forward]
            values = _patched_forward(model, target_resid[layer], layer, chunk, hook, source_cache, metric)
            results.update(zip(chunk, values))
    out = torch.stack([results[key] for key in itertools.product(layers, positions, components)])
    shape = (len(layers), len(positions)) + ((len(components),) if components != [None] else ())
    return out.reshape(shape + tuple(out.shape[1:]))


@torch.no_grad()
def _patched_forward(model, resid: Tensor, layer: int, chunk: list[tuple], kind: str,
                     source_cache: dict[str, Tensor], metric) -> list[Tensor]:
    """One forward from ``layer`` over ``len(chunk)`` stacked copies of the target residual
    ``resid`` (the target run's input to ``layer``), each patched at its own grid point."""
    n = resid.shape[0]
    g_idx = torch.arange(len(chunk), device=resid.device)
    p_idx = torch.tensor([pos for _, pos, _ in chunk], device=resid.device)
    c_idx = None if chunk[0][2] is None else torch.tensor([c for _, _, c in chunk], device=resid.device)
    src = source_cache[hook_name(kind, layer)]

    def patch(act: Tensor, hook) -> Tensor:
        view = act.view(len(chunk), n, *act.shape[1:])
        if c_idx is None:
            view[g_idx, :, p_idx] = src[:, p_idx].transpose(0, 1).to(act.dtype)
        else:
            view[g_idx, :, p_idx, c_idx] = src[:, p_idx, c_idx].transpose(0, 1).to(act.dtype)
        return act

    batch = resid.repeat(len(chunk), 1, 1)
    with model.hooks(fwd_hooks=[(hook_name(kind, layer), patch)]):
        logits = model(batch, start_at_layer=layer, return_type="logits")
    logits = logits.view(len(chunk), n, *logits.shape[1:])
    return [torch.as_tensor(metric(logits[g])).detach().cpu() for g in range(len(chunk))]


@torch.no_grad()
def run_with_patch(model, source: Int[Tensor, "n pos"], target: Int[Tensor, "n pos"], *,
                   hook: str = "resid_pre", layer: int = 0, positions: list[int] | None = None) -> Tensor:
    """The target run's logits with the source activation patched at one layer, at ``positions``
    (all positions by default). Patching the whole residual at a layer reproduces the source run.

    >>> from memlens.tasks import make_task
    >>> from memlens.models import build_model, ModelConfig
    >>> task = make_task("fda", preset="tiny")
    >>> model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0)
    >>> ex = task.generate(0).test[:4]
    >>> torch.allclose(run_with_patch(model, ex.tokens, ex.tokens.flip(0)), model(ex.tokens))
    True
    """
    if source.shape != target.shape:
        raise AnalysisError(f"source and target token shapes differ: {tuple(source.shape)} vs "
                            f"{tuple(target.shape)}")
    layers, positions, _ = check_grid(model, hook, [layer], positions, None, target.shape[1])
    device = model_device(model)
    name = hook_name(hook, layer)
    _, cache = model.run_with_cache(source.to(device), names_filter=lambda x: x == name,
                                    return_type=None)
    src = cache[name]
    index = torch.tensor(positions, device=device)

    def patch(act: Tensor, hook) -> Tensor:
        act[:, index] = src[:, index].to(act.dtype)
        return act

    with model.hooks(fwd_hooks=[(name, patch)]):
        return model(target.to(device), return_type="logits")
