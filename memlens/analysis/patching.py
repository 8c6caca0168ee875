"""Activation patching on TransformerLens hooks, computing only what a patch can change.

Direction follows ``transformer_lens.patching``: activations of the *source* run (TL's "clean
cache") are written into the *target* run (TL's "corrupted tokens"), and ``metric(logits)`` is
computed on the patched run. ``patch_grid(model, source=clean, target=corrupted, ...)`` equals
``get_act_patch_resid_pre(model, corrupted, clean_cache, metric)``.

A patch at (layer L, position p) can only change activations at layers >= L and positions >= p
(the model is causal), and it changes nothing at all for an example whose source activation
there equals its target activation. So, for each grid point, the engine

1. skips the examples whose source and target activations are equal there (their patched run
   is the target run: its logits are reused);
2. runs the others from layer L (``start_at_layer``) on positions p.. only, with the target
   run's keys and values of positions < p given as a frozen TransformerLens key-value cache
   (a ``resid_pre`` patch changes layer L's input at p alone, so there the fused suffix also
   reuses the target's keys and values of the positions after p);
3. writes those suffix logits into a copy of the target logits and calls ``metric``.

Grid points of one (layer, position) share a forward, chunked to bound memory. Hooks are
attached with ``model.hooks(...)``, which removes them in a ``finally``, also when a hook or the
metric raises. The design and its measured speed-up are in docs/benchmarks/patching.md.

Step 2 needs a model that can resume a forward pass at a layer with a key-value cache
(:func:`memlens.backend.can_resume`: HookedTransformer). On TransformerLens 4's bridge, which
cannot, the engine keeps step 1 and runs whole sequences instead, every changed (grid point,
example) of the whole grid as rows of the same chunked forward passes, each row patched by the
hook of its own layer at its own position (docs/backends.md has the speed-ups).

``method="full"`` runs one whole forward per grid point instead (what ``transformer_lens.patching``
does): slower, but exact for any model, including one with permanent hooks that read the input
tokens themselves (the suffix runs start past the embedding), as the look-up test models do.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import torch
from jaxtyping import Int
from torch import Tensor

from memlens import backend
from memlens.backend import Model
from memlens.analysis.common import (AnalysisError, check_layers, check_positions, model_device,
                                     stop_layer)

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


def patch_grid(model: Model, source: Int[Tensor, "n pos"], target: Int[Tensor, "n pos"],
               metric: Callable[[Tensor], Tensor], *, hook: str = "resid_pre",
               layers: list[int] | None = None, positions: list[int] | None = None,
               components: list[int] | None = None, chunk_size: int = 4096,
               source_cache: dict[str, Tensor] | None = None, method: str = "suffix",
               logit_positions: list[int] | None = None, target_cache: dict | None = None) -> Tensor:
    """Patch ``source`` activations into the ``target`` run at every grid point.

    Returns ``metric`` for every (layer, position[, component]) as a tensor of shape
    ``(len(layers), len(positions)[, len(components)], *metric_shape)``. ``metric`` maps the
    patched run's logits ``(n, pos, vocab)`` to a scalar or any tensor (e.g. per example).
    ``chunk_size`` bounds the number of sequences in one forward pass.
    ``source_cache`` (hook name -> activation) skips the source run when given.
    ``target_cache``: a dict that keeps the target run's record (the engine's own run of
    ``target``; its logits under ``"logits"``: at ``logit_positions`` where the model resumes
    runs, otherwise at every position up to the last of them, e.g. on the 4.x bridge): calls given the
    same dict with the same target, hook, layers and logit positions run the target once (e.g.
    two sources patched into one target).
    ``method``: ``"suffix"`` (the engine above) or ``"full"`` (a whole forward per grid point).
    Except with ``method="full"``, ``metric`` runs once per grid point that changes some
    example, and once in all for the grid points that change none (they share the unpatched
    target's value): it should be a function of the logits alone. With ``logit_positions``,
    both runs stop at the last position read, and suffix runs count positions from the patched
    one: a hook the caller attaches sees those shorter runs (one that reads positions from the
    end needs ``method="full"``).
    ``logit_positions``: the positions ``metric`` reads; it then receives the logits there
    alone, ``(n, len(logit_positions), vocab)``. The engine then computes nothing a patch
    cannot pass on to them: no position after the last of them, and in the last layer
    only those positions (with no hook attached, a ``resid_pre`` grid runs the fused suffix of
    :func:`memlens.backend.resume_logits`, equal to float rounding).

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
    if method not in ("suffix", "full"):
        raise AnalysisError(f"method={method!r} is invalid: expected 'suffix' or 'full'")
    if target_cache is not None and not isinstance(target_cache, dict):
        raise AnalysisError(f"target_cache={type(target_cache).__name__} is invalid: expected a dict")
    reads = None if logit_positions is None else check_positions(n_pos, list(logit_positions))
    if reads == []:
        raise AnalysisError("logit_positions=[] reads no position: give the positions the metric "
                            "reads, or None for all")
    if reads is not None:
        read = lambda logits: metric(logits[:, reads])  # noqa: E731
    else:
        read = metric
    device = model_device(model)
    names = sorted({hook_name(hook, layer) for layer in layers})
    if method == "full":
        return _full_grid(model, source.to(device), target.to(device), read, hook, layers,
                          positions, components)
    resume = backend.can_resume(model)
    # Causal: nothing at a position after the last read one reaches the logits read, and
    # activations before it do not depend on later tokens, so both sequences run up to it
    # alone; a patch after it changes nothing read.
    horizon = max(reads) + 1 if reads else n_pos
    source, target = source[:, :horizon], target[:, :horizon]
    source, target = source.to(device), target.to(device)
    stop = stop_layer(names, model.cfg.n_layers)  # the source run stops after the last layer read
    # A source that shares its first tokens with the target shares its activations there: the
    # target run records the keys and values it starts from (every layer the source runs).
    shares = resume and source_cache is None and backend.records_fused(model, names)
    kv_layers = range(0 if shares else min(layers), model.cfg.n_layers)
    wanted = set(names) | {f"blocks.{layer}.hook_resid_pre" for layer in layers}
    if resume:
        wanted |= {f"blocks.{i}.attn.hook_{kv}" for i in kv_layers for kv in "kv"}
        if hook == "resid_pre":  # a patched layer's own queries after the patch are the target's
            wanted |= {f"blocks.{layer}.attn.hook_q" for layer in layers}
    if not resume:
        if source_cache is None:
            source_cache = _source_run(model, source, names, stop)
        logits, acts = _target_record(model, target, wanted, None, target_cache,
                                      (hook, tuple(layers), None))
        results = _patch_whole(model, target, _TargetRun(logits, acts), hook, layers,
                               positions, components, source_cache, read, chunk_size,
                               functools.cache(lambda: torch.as_tensor(read(logits)).detach().cpu()))
        return _stack(results, layers, positions, components)
    # The suffix engine reads the target's logits at the read positions only.
    target_read, acts = _target_record(model, target, wanted, reads, target_cache,
                                       (hook, tuple(layers), None if reads is None else tuple(reads),
                                        shares))
    if source_cache is None:
        source_cache = _source_run(model, source, names, stop, acts if shares else None, target)
    target_run = _TargetRun(target_read, acts)
    results: dict[tuple, Tensor] = {}
    reads = list(range(n_pos)) if reads is None else reads
    # The metric of the unpatched target, computed once for every grid point that changes nothing.
    unpatched = functools.cache(lambda: torch.as_tensor(metric(target_read)).detach().cpu())
    inside = [pos for pos in positions if pos < horizon]
    for layer in layers:
        name = hook_name(hook, layer)
        differs = _differs(source_cache[name], target_run.acts[name], inside, components)
        for pos in positions:
            if pos >= horizon:
                values = [unpatched() for _ in components]
            else:
                values = _patch_suffix(model, target_run, hook, layer, pos, components, differs(pos),
                                       source_cache[name], metric, chunk_size, reads, target_read,
                                       unpatched)
            results.update(((layer, pos, c), v) for c, v in zip(components, values))
    return _stack(results, layers, positions, components)


def _source_run(model, source: Tensor, names: list[str], stop: int | None,
                target_acts: dict[str, Tensor] | None = None, target: Tensor | None = None
                ) -> dict[str, Tensor]:
    """The source run's activations ``names``, stopped at layer ``stop`` (resid_pre of layer L
    is the input to L: no need to run L itself). With the target's recorded run
    (``target_acts``: every layer's keys and values and ``names``), positions before the first
    token where any source differs from its target are the target's, and the run starts there."""
    start = 0
    if target_acts is not None:
        differs = (source != target).any(0).nonzero()
        start = int(differs[0]) if len(differs) else source.shape[1]
    if start == source.shape[1]:  # the same sequences
        return {name: target_acts[name] for name in names}
    prefix = None
    if start:
        layers = range(model.cfg.n_layers if stop is None else stop)
        prefix = ([target_acts[f"blocks.{i}.attn.hook_k"][:, :start] for i in layers],
                  [target_acts[f"blocks.{i}.attn.hook_v"][:, :start] for i in layers])
    out, acts = backend.recorded_run(model, source[:, start:], names, stop_at_layer=stop,
                                     return_logits=False, prefix=prefix)
    handed_on = None if stop is None else f"blocks.{stop}.hook_resid_pre"
    if handed_on in names:  # what the last block run hands on
        acts[handed_on] = out
    if start:
        acts = {name: torch.cat([target_acts[name][:, :start], act], 1) for name, act in acts.items()}
    return acts


def _target_record(model, target: Tensor, wanted: set[str], reads: list[int] | None, cache: dict | None,
                   key: tuple) -> tuple[Tensor, dict[str, Tensor]]:
    """The target run's logits (at ``reads`` when given) and activations ``wanted``, from
    ``cache`` when it holds this target's run for the same ``key``, else recorded (and kept
    there)."""
    if cache and cache.get("key") == key and torch.equal(cache["tokens"], target):
        return cache["logits"], cache["acts"]
    logits, acts = backend.recorded_run(model, target, wanted, logit_positions=reads)
    if cache is not None:
        cache.clear()
        # A copy: a caller that refills its token buffer in place must not find this record.
        cache.update(key=key, tokens=target.clone(), logits=logits, acts=acts)
    return logits, acts


def _stack(results: dict[tuple, Tensor], layers, positions, components) -> Tensor:
    out = torch.stack([results[key] for key in itertools.product(layers, positions, components)])
    shape = (len(layers), len(positions)) + ((len(components),) if components != [None] else ())
    return out.reshape(shape + tuple(out.shape[1:]))


@torch.no_grad()
def _full_grid(model, source: Tensor, target: Tensor, metric, kind: str, layers: list[int],
               positions: list[int], components: list) -> Tensor:
    """One whole forward of the target per grid point, the source activation patched in."""
    names = {hook_name(kind, layer) for layer in layers}
    _, cache = model.run_with_cache(source, names_filter=lambda x: x in names, return_type=None)
    results: dict[tuple, Tensor] = {}
    for layer, pos, comp in itertools.product(layers, positions, components):
        src = cache[hook_name(kind, layer)]

        def patch(act: Tensor, hook, pos=pos, comp=comp, src=src) -> Tensor:
            if comp is None:
                act[:, pos] = src[:, pos].to(act.dtype)
            else:
                act[:, pos, comp] = src[:, pos, comp].to(act.dtype)
            return act

        with model.hooks(fwd_hooks=[(hook_name(kind, layer), patch)]):
            results[(layer, pos, comp)] = torch.as_tensor(metric(model(target))).detach().cpu()
    return _stack(results, layers, positions, components)


class _TargetRun:
    """The unpatched target run: its logits and the activations the engine reuses."""

    def __init__(self, logits: Tensor, acts: dict[str, Tensor]):
        self.logits, self.acts = logits, acts

    def prefix_kv(self, model, layer: int, pos: int, examples: Tensor | slice
                  ) -> tuple[list[Tensor], list[Tensor]]:
        """Keys and values of positions < ``pos`` of ``examples`` (indices, or a slice: views),
        for the layers from ``layer`` on."""
        layers = range(layer, model.cfg.n_layers)
        return ([self.acts[f"blocks.{i}.attn.hook_k"][examples, :pos] for i in layers],
                [self.acts[f"blocks.{i}.attn.hook_v"][examples, :pos] for i in layers])


def _differs(src: Tensor, tgt: Tensor, positions: list[int], components: list
             ) -> Callable[[int], list[Tensor]]:
    """``_changed_examples`` at each of ``positions``; for whole activations, compared at all of
    them in one pass."""
    if components != [None] or len(positions) < 2:
        return lambda pos: _changed_examples(src, tgt, pos, components)
    index = torch.tensor(positions, device=src.device)
    diff = (src[:, index] != tgt[:, index]).flatten(2).any(2)  # (n, len(positions))
    column = {pos: j for j, pos in enumerate(positions)}
    return lambda pos: [diff[:, column[pos]].nonzero()[:, 0]]


def _changed_examples(src: Tensor, tgt: Tensor, pos: int, components: list) -> list[Tensor]:
    """Per component, the indices of the examples whose source activation differs from the
    target's at ``pos`` (a patch leaves the others' run exactly as it was)."""
    if components == [None]:
        return [(src[:, pos] != tgt[:, pos]).flatten(1).any(1).nonzero()[:, 0]]
    diff = (src[:, pos, components] != tgt[:, pos, components])
    diff = diff.flatten(2).any(2) if diff.ndim > 2 else diff  # heads: (n, comp, d_head)
    return [diff[:, j].nonzero()[:, 0] for j in range(len(components))]


@torch.no_grad()
def _patch_suffix(model, target_run: _TargetRun, kind: str, layer: int, pos: int,
                  components: list, changed: list[Tensor], src: Tensor, metric,
                  chunk_size: int, reads: list[int], target_read: Tensor,
                  unpatched: Callable[[], Tensor]) -> list[Tensor]:
    """``metric`` of the patched run for each component at (layer, pos). ``reads``: the
    positions whose logits ``metric`` sees (``target_read``: the target run's there;
    ``unpatched()``: its metric, for a component that changes no example)."""
    # Only the read positions from ``pos`` on can change; none: the patch changes nothing read.
    cols = [j for j, q in enumerate(reads) if q >= pos]
    if not cols:
        changed = [idx[:0] for idx in changed]
    rows = [(j, ex) for j, idx in enumerate(changed) for ex in idx.tolist()]
    suffix_logits: list[Tensor] = []
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start:start + chunk_size]
        comp_of_row = torch.tensor([j for j, _ in chunk], device=src.device)
        examples = torch.tensor([ex for _, ex in chunk], device=src.device)
        suffix_logits.append(_suffix_forward(model, target_run, kind, layer, pos, components,
                                             comp_of_row, examples, src,
                                             [reads[j] - pos for j in cols]))
    suffix = torch.cat(suffix_logits) if suffix_logits else None
    values, offset = [], 0
    col_index = torch.tensor(cols, device=target_read.device)
    for idx in changed:
        if not len(idx):
            values.append(unpatched())
            continue
        logits = target_read.clone()
        logits[idx[:, None], col_index] = suffix[offset:offset + len(idx)]
        offset += len(idx)
        values.append(torch.as_tensor(metric(logits)).detach().cpu())
    return values


def _suffix_forward(model, target_run: _TargetRun, kind: str, layer: int, pos: int,
                    components: list, comp_of_row: Tensor, examples: Tensor, src: Tensor,
                    queries: list[int]) -> Tensor:
    """Logits at suffix indices ``queries`` (positions ``pos + q``) of the target run of
    ``examples``, patched at (layer, pos) with the source activation (of component
    ``components[comp_of_row[r]]`` for row r)."""
    rows = torch.arange(len(examples), device=src.device)
    if components == [None]:
        patch_value = src[examples, pos]
    else:
        comp = torch.tensor(components, device=src.device)[comp_of_row]
        patch_value = src[examples, pos, comp]
    if kind == "resid_pre":  # the patch is the suffix's first input: no hook needed
        # All examples (rows are sorted, distinct indices): views instead of copies.
        entering = target_run.acts[f"blocks.{layer}.hook_resid_pre"]
        take = slice(None) if len(examples) == len(entering) else examples
        resid = entering[take, pos:].clone()
        resid[:, 0] = patch_value.to(resid.dtype)
        keys, values = target_run.prefix_kv(model, layer, pos, take)
        # Layer ``layer``'s keys, values and queries but at ``pos`` are the target's: its input
        # is unchanged there.
        known = tuple(target_run.acts[f"blocks.{layer}.attn.hook_{kv}"][take] for kv in "kvq")
        return backend.resume_logits(model, resid, layer, keys, values, queries, known)
    resid = target_run.acts[f"blocks.{layer}.hook_resid_pre"][examples, pos:]
    keys, values = target_run.prefix_kv(model, layer, pos, examples)

    def patch(act: Tensor, hook) -> Tensor:
        if components == [None]:
            act[:, 0] = patch_value.to(act.dtype)
        else:
            act[rows, 0, comp] = patch_value.to(act.dtype)
        return act

    with model.hooks(fwd_hooks=[(hook_name(kind, layer), patch)]):
        return backend.resume_logits(model, resid, layer, keys, values, queries)  # hooked: the model's own run


@torch.no_grad()
def _patch_whole(model, target: Tensor, target_run: _TargetRun, kind: str, layers: list[int],
                 positions: list[int], components: list, source_cache: dict[str, Tensor], metric,
                 chunk_size: int, unpatched: Callable[[], Tensor]) -> dict[tuple, Tensor]:
    """The grid for models that cannot resume with a key-value cache (the bridge).

    Every (grid point, changed example) is one row. Per layer, the rows of all its positions and
    components share chunked forward passes of whole sequences from that layer, and the hook
    there patches each row at its own position and component. Unchanged examples reuse the
    target logits, as in the suffix path, and share its metric (``unpatched``); so do the
    positions after the (already truncated) target's last."""
    device = target.device
    # Whole sequences are costlier rows than suffixes: at 4096 rows a chunk ran 1.6x slower per
    # row than at 128-512 on 2 CPU cores (cache misses), so chunks stay at most 512 rows here.
    chunk_size = min(chunk_size, 512)
    results = {}
    for layer in layers:
        name = hook_name(kind, layer)
        rows = []  # (pos, component index, example)
        for pos in positions:
            if pos >= target.shape[1]:
                continue
            changed = _changed_examples(source_cache[name], target_run.acts[name], pos, components)
            rows += [(pos, j, ex) for j, idx in enumerate(changed) for ex in idx.tolist()]
        grid = torch.tensor(rows, device=device, dtype=torch.long).reshape(-1, 3)
        resid = target_run.acts[f"blocks.{layer}.hook_resid_pre"]
        row_logits = []
        for start in range(0, len(grid), chunk_size):
            chunk = grid[start:start + chunk_size]
            with model.hooks(fwd_hooks=[(name, _row_patch(chunk, components, source_cache[name]))]):
                row_logits.append(backend.run_from_layer(model, resid[chunk[:, 2]], layer))
        all_logits = torch.cat(row_logits) if row_logits else None
        for pos in positions:
            for j, comp in enumerate(components):
                mine = ((grid[:, 0] == pos) & (grid[:, 1] == j)).nonzero()[:, 0]
                if not len(mine):
                    results[(layer, pos, comp)] = unpatched()
                    continue
                logits = target_run.logits.clone()
                logits[grid[mine, 2]] = all_logits[mine]
                results[(layer, pos, comp)] = torch.as_tensor(metric(logits)).detach().cpu()
    return results


def _row_patch(chunk: Tensor, components: list, src: Tensor):
    """A hook writing, for each row (position, component index, example) of ``chunk``, its
    example's source activation at its position (and component) into the run."""
    rows = torch.arange(len(chunk), device=chunk.device)
    pos, examples = chunk[:, 0], chunk[:, 2]

    def patch(act: Tensor, hook) -> Tensor:
        if components == [None]:
            act[rows, pos] = src[examples, pos].to(act.dtype)
        else:
            comp = torch.tensor(components, device=act.device)[chunk[:, 1]]
            act[rows, pos, comp] = src[examples, pos, comp].to(act.dtype)
        return act

    return patch


@torch.no_grad()
def run_with_patch(model: Model, source: Int[Tensor, "n pos"], target: Int[Tensor, "n pos"], *,
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
