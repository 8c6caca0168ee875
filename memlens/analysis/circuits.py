"""Edge graphs, edge attribution (EAP, EAP-IG), exact circuit patching and circuit growth.

Nodes write into the residual stream (``embed``: token + position embeddings; each head
``L{l}.H{h}``: its ``hook_z`` times its ``W_O``; each MLP ``L{l}.mlp``: ``hook_mlp_out``) or
read from it (each head through its query, key and value inputs, one shared input per head,
``hook_attn_in``; each MLP's input, ``hook_mlp_in``; the unembedding, ``logits``, reading the
final residual). An
edge joins a writer to a later reader: summed over positions, or one edge per position
(:class:`EdgeIndex`), where the writer's output at position ``p`` is read by the reader's input
at position ``p``.

Attribution (:func:`attribute`): EAP (Syed et al. 2023) scores an edge by the first-order change
of the metric when the reader receives the writer's corrupted output instead of its clean one,
``(a_w(corrupt) - a_w(clean)) . d metric / d input_r``; EAP-IG (Hanna et al. 2024) replaces the
gradient at the clean input by its mean over ``steps`` points on the straight line from the
corrupted to the clean input embeddings, ``alpha = 1/steps, 2/steps, ..., 1``, so one step is
EAP. TransformerLens 3.9 has neither, so both are implemented here on its hooks
(``use_attn_in``, ``use_hook_mlp_in``, restored afterwards).

Exact patching (:func:`patched_logits`): every removed edge feeds its reader the writer's
corrupted output, all kept edges the output of the patched run itself; all edges kept is the
clean run, none the corrupted one (both tested). Circuits are grown from the logits back
(:func:`growth_order`): an edge may join only once its reader is the logits or a node already in
the circuit, in order of ``|score|``.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from memlens import backend
from memlens.analysis.common import AnalysisError, Result, chunks, model_device

POSITION_MODES = ("auto", "per_position", "summed")


@dataclass(frozen=True)
class Graph:
    """Writers, readers and which (writer, reader) pairs are edges, for a model's shape.

    >>> from memlens.models import ModelConfig, build_model
    >>> from memlens.tasks import make_task
    >>> net = build_model(ModelConfig(n_layers=1, d_model=16, n_heads=2), make_task("fda", preset="tiny"), seed=0)
    >>> g = Graph.of(net)
    >>> g.writers, g.readers, int(g.edges.sum())
    (['embed', 'L0.H0', 'L0.H1', 'L0.mlp'], ['L0.H0', 'L0.H1', 'L0.mlp', 'logits'], 9)
    """

    writers: list[str]
    readers: list[str]
    edges: Tensor  # (n_writers, n_readers) bool

    @classmethod
    def of(cls, model) -> "Graph":
        if getattr(model.cfg, "attn_only", False):
            raise AnalysisError("the circuit graph needs MLP blocks: this model is attention-only")
        n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
        writers, w_layer = ["embed"], [(-1, 0)]  # (layer, stage): stage 0 = attention, 1 = MLP
        readers, r_layer = [], []
        for layer in range(n_layers):
            for h in range(n_heads):
                readers.append(f"L{layer}.H{h}")
                r_layer.append((layer, 0))
            readers.append(f"L{layer}.mlp")
            r_layer.append((layer, 1))
            for h in range(n_heads):
                writers.append(f"L{layer}.H{h}")
                w_layer.append((layer, 0))
            writers.append(f"L{layer}.mlp")
            w_layer.append((layer, 1))
        readers.append("logits")
        r_layer.append((n_layers, 0))
        edges = torch.tensor([[w < r for r in r_layer] for w in w_layer])
        return cls(writers, readers, edges)

    @property
    def n_pairs(self) -> int:
        return int(self.edges.sum())


@dataclass(frozen=True)
class EdgeIndex:
    """The edges of a :class:`Graph` as a flat list: one per (writer, reader) pair, or one per
    (writer, reader, position) in ``per_position`` mode. Edge ``e`` is pair ``e // n_slots`` at
    position ``e % n_slots`` (``n_slots`` = positions, or 1 when summed).

    Nodes, for growing circuits: node ``i < len(writers)`` is writer ``i`` (a head or MLP is the
    same node as writer and as reader); the last node is ``logits``.

    >>> from memlens.models import ModelConfig, build_model
    >>> from memlens.tasks import make_task
    >>> net = build_model(ModelConfig(n_layers=1, d_model=16, n_heads=2), make_task("fda", preset="tiny"), seed=0)
    >>> idx = EdgeIndex.of(Graph.of(net), n_pos=8)
    >>> idx.per_position, idx.n_edges, idx.label(idx.n_edges - 1)
    (True, 72, ('L0.mlp', 'logits', 7))
    """

    graph: Graph
    n_pos: int
    per_position: bool

    @classmethod
    def of(cls, graph: Graph, n_pos: int, positions: str = "auto", max_edges: int = 2000) -> "EdgeIndex":
        """``positions``: ``per_position``, ``summed``, or ``auto`` (per position when that makes
        at most ``max_edges`` edges)."""
        if positions not in POSITION_MODES:
            raise AnalysisError(f"positions={positions!r} is invalid: choose one of {POSITION_MODES}")
        per_position = positions == "per_position" or (
            positions == "auto" and graph.n_pairs * n_pos <= max_edges)
        return cls(graph, int(n_pos), per_position)

    @property
    def n_slots(self) -> int:
        return self.n_pos if self.per_position else 1

    @property
    def n_edges(self) -> int:
        return self.graph.n_pairs * self.n_slots

    @functools.cached_property
    def pairs(self) -> Int[Tensor, "n_pairs 2"]:
        """(writer, reader) of each pair, in edge order."""
        return self.graph.edges.nonzero()

    @property
    def logits_node(self) -> int:
        return len(self.graph.writers)

    def node_names(self) -> list[str]:
        return list(self.graph.writers) + ["logits"]

    def edge_nodes(self) -> tuple[np.ndarray, np.ndarray]:
        """Per edge: its writer node and its reader node (see the class docstring)."""
        names = self.node_names()
        pairs = self.pairs.numpy()
        reader_node = np.array([names.index(self.graph.readers[r]) for r in pairs[:, 1]])
        return np.repeat(pairs[:, 0], self.n_slots), np.repeat(reader_node, self.n_slots)

    def edge_reader_layer(self) -> np.ndarray:
        """Per edge: the layer of its reader (``n_layers`` for the logits)."""
        layers = [int(name[1:].split(".")[0]) for name in self.graph.readers[:-1]]  # "L{l}.H{h}", "L{l}.mlp"
        layers.append(max(layers, default=-1) + 1)  # the logits
        return np.repeat([layers[r] for r in self.pairs[:, 1].tolist()], self.n_slots)

    def label(self, e: int) -> tuple[str, str, int | None]:
        """(writer, reader, position or None when summed) of edge ``e``."""
        w, r = self.pairs[e // self.n_slots].tolist()
        return self.graph.writers[w], self.graph.readers[r], (e % self.n_slots if self.per_position else None)

    def labels(self) -> pd.DataFrame:
        rows = [dict(zip(("writer", "reader", "pos"), self.label(e))) for e in range(self.n_edges)]
        return pd.DataFrame(rows).rename_axis("edge").reset_index()

    def flatten(self, scores: Float[Tensor, "*batch pos writer reader"]) -> Float[Tensor, "*batch edge"]:
        """Edge values from a dense (..., pos, writer, reader) tensor (summed over positions
        unless per position)."""
        w, r = self.pairs.T
        dense = scores[..., w, r]  # (..., pos, n_pairs)
        if not self.per_position:
            return dense.sum(-2)
        return dense.transpose(-1, -2).flatten(-2)

    def removed_mask(self, kept: Bool[Tensor, " edge"] | np.ndarray) -> Float[Tensor, "pos writer reader"]:
        """1 where an edge of the graph is not kept (its reader gets the corrupted value)."""
        kept = torch.as_tensor(np.asarray(kept), dtype=torch.bool)
        if kept.shape != (self.n_edges,):
            raise AnalysisError(f"kept has shape {tuple(kept.shape)}, expected ({self.n_edges},)")
        removed = (~kept).float().view(self.graph.n_pairs, self.n_slots).T  # (slots, n_pairs)
        mask = torch.zeros(self.n_pos, len(self.graph.writers), len(self.graph.readers))
        w, r = self.pairs.T
        mask[:, w, r] = removed.expand(self.n_pos, -1)
        return mask

    def kept_from_set(self, edges) -> Bool[Tensor, " edge"]:
        kept = torch.zeros(self.n_edges, dtype=torch.bool)
        kept[list(edges)] = True
        return kept


#: Run circuits on the backend's split view (TransformerLens 4.x: the bridge's native attention
#: has no per-head inputs and no ``start_at_layer``; :func:`memlens.backend.split_hooks` gives a
#: view with per-head q/k/v inputs and results). On 3.9 the faster shared-input sites are used.
SPLIT_VIEW: bool = backend.BACKEND == "bridge"


class _NormOnce(torch.nn.Module):
    """A block's ``ln1`` that normalizes a tensor once when it is passed again: with
    ``use_attn_in`` TransformerLens normalizes the same per-head input for the query, the key
    and the value (the costliest step of these runs)."""

    def __init__(self, norm: torch.nn.Module):
        super().__init__()
        self.norm = norm
        self.last: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.last is None or self.last[0] is not x:
            self.last = (x, self.norm(x))
        return self.last[1]


@dataclass
class _Sites:
    """The module to run and the hooks of the graph's nodes on it.

    ``split``: heads read ``hook_{q,k,v}_input`` (patched alike) and write ``attn.hook_result``;
    otherwise they read one shared ``hook_attn_in`` and write ``attn.hook_z`` times ``W_O``.
    ``resumable``: a run may start at a layer from a given residual (``start_at_layer``)."""

    run: torch.nn.Module
    n_layers: int
    split: bool
    params: dict[str, Tensor]

    @property
    def resumable(self) -> bool:
        return not self.split

    def writer_hooks(self) -> list[str]:
        head = "attn.hook_result" if self.split else "attn.hook_z"
        names = ["hook_embed", "hook_pos_embed"]
        for layer in range(self.n_layers):
            names += [f"blocks.{layer}.{head}", f"blocks.{layer}.hook_mlp_out"]
        return names

    def reader_hooks(self) -> list[list[str]]:
        """Per reader group (heads of layer 0, MLP 0, ..., the logits): its hooks."""
        groups = []
        for layer in range(self.n_layers):
            heads = ["q_input", "k_input", "v_input"] if self.split else ["attn_in"]
            groups += [[f"blocks.{layer}.hook_{x}" for x in heads], [f"blocks.{layer}.hook_mlp_in"]]
        return groups + [[f"blocks.{self.n_layers - 1}.hook_resid_post"]]

    def writer_group(self, name: str, act: Tensor) -> Tensor:
        """A writer hook's activation as (batch, pos, writers, d_model): a head's output is its
        ``z`` times its ``W_O`` (TransformerLens' ``hook_result``, without ``b_O``)."""
        if name.endswith("attn.hook_z"):
            return torch.einsum("bphe,hed->bphd", act, self.params[name.replace("hook_z", "W_O")])
        return act if name.endswith("attn.hook_result") else act[:, :, None]

    def writers(self, current: dict[str, Tensor]) -> Tensor:
        """Writer outputs recorded so far in a forward pass (all of them from a complete
        cache), in Graph order: (batch, pos, n_writers_so_far, d_model)."""
        parts = [(current["hook_embed"] + current["hook_pos_embed"])[:, :, None]]
        for name in self.writer_hooks()[2:]:
            if name not in current:
                break
            parts.append(self.writer_group(name, current[name]))
        return torch.cat(parts, 2)


@contextlib.contextmanager
def _sites(model):
    """:class:`_Sites` for ``model``, its flags and modules restored afterwards. On 3.9: one
    input per head shared by its query, key and value (``hook_attn_in``: our reader is the
    head), ``ln1`` applied to it once, head outputs from ``hook_z`` (``use_split_qkv_input``
    would triple the per-head layer norms and ``use_attn_result`` materializes a batch x pos x
    head x d_head x d_model product: both several times slower)."""
    params = backend.canonical_params(model)
    if SPLIT_VIEW:
        with backend.split_hooks(model) as run:
            yield _Sites(run, model.cfg.n_layers, True, params)
        return
    old = (model.cfg.use_attn_in, model.cfg.use_split_qkv_input, model.cfg.use_hook_mlp_in)
    norms = [block.ln1 for block in model.blocks]
    model.set_use_split_qkv_input(False)
    model.set_use_attn_in(True)
    model.set_use_hook_mlp_in(True)
    try:
        for block, norm in zip(model.blocks, norms):
            block.ln1 = _NormOnce(norm)
        yield _Sites(model, model.cfg.n_layers, False, params)
    finally:
        for block, norm in zip(model.blocks, norms):
            block.ln1 = norm
        model.set_use_attn_in(old[0])
        model.set_use_split_qkv_input(old[1])
        model.set_use_hook_mlp_in(old[2])


@torch.no_grad()
def writer_outputs(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos writer d_model"]:
    """Every writer's output (Graph order) on ``tokens``."""
    with _sites(model) as sites:
        names = set(sites.writer_hooks())
        _, cache = sites.run.run_with_cache(tokens.to(model_device(model)), names_filter=lambda n: n in names,
                                            return_type=None)
        return sites.writers(dict(cache.items()))


@dataclass
class Attribution:
    """Per-example edge attribution (dense: example x position x writer x reader), for EAP and
    for EAP-IG with ``steps`` steps (the same tensor when ``steps == 1``), with the metric of
    each example on the clean and on the corrupted input."""

    eap: Tensor
    eap_ig: Tensor
    steps: int
    metric_clean: Tensor
    metric_corrupt: Tensor


def attribute(model, clean: Int[Tensor, "batch pos"], corrupt: Int[Tensor, "batch pos"],
              metric: Callable[[Tensor], Tensor], steps: int = 1, chunk_size: int = 512) -> Attribution:
    """EAP and EAP-IG scores of every (writer, reader, position) for ``metric(logits)``.

    ``metric`` maps logits (batch, pos, vocab) to one value per example (or one scalar, whose
    per-example split is then only meaningful summed). The score of example ``b`` is
    ``(a_w(corrupt) - a_w(clean))[b, p] . mean_k d metric(x_k) / d input_r[b, p]`` with
    ``x_k = e(corrupt) + k/steps (e(clean) - e(corrupt))`` the input embeddings, ``k = 1..steps``:
    summed over examples it approximates the metric's change when the edge is corrupted.

    >>> from memlens.models import ModelConfig, build_model
    >>> from memlens.tasks import make_task
    >>> task = make_task("fda", preset="tiny")
    >>> net = build_model(ModelConfig(n_layers=1, d_model=16, n_heads=2), task, seed=0)
    >>> toks = task.generate(seed=0).test.tokens[:4]
    >>> att = attribute(net, toks, toks.roll(1, 0), lambda logits: logits[:, -2, 0], steps=2)
    >>> tuple(att.eap_ig.shape)  # example, position, writer, reader
    (4, 10, 4, 4)
    """
    if clean.shape != corrupt.shape:
        raise AnalysisError(f"clean and corrupt token shapes differ: {tuple(clean.shape)} vs {tuple(corrupt.shape)}")
    if int(steps) != steps or steps < 1:
        raise AnalysisError(f"steps={steps!r} is invalid: integrated gradients need at least 1 step")
    parts = [_attribute_chunk(model, clean[s], corrupt[s], metric, int(steps))
             for s in chunks(len(clean), chunk_size)]
    joined = [parts[0][i] if len(parts) == 1 else torch.cat([p[i] for p in parts]) for i in range(4)]
    return Attribution(joined[0], joined[1], int(steps), joined[2], joined[3])


def _reader_grads(sites: _Sites, tokens: Tensor, metric: Callable, embed_at: Callable | None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Gradient of the summed metric at every reader's input (batch, pos, n_readers, d), the
    logits and the writer outputs of this run; ``embed_at`` replaces the token embeddings."""
    groups = sites.reader_hooks()
    readers = [name for group in groups for name in group]
    writers = set(sites.writer_hooks())
    store: dict[str, Tensor] = {}

    def keep(act, hook):
        store[hook.name] = act
        return act

    hooks = [(n, keep) for n in readers + sorted(writers)]
    if embed_at is not None:
        hooks.insert(0, ("hook_embed", lambda act, hook: embed_at(act)))
    with torch.enable_grad(), sites.run.hooks(fwd_hooks=hooks):
        logits = sites.run(tokens)
        value = metric(logits)
        grads = dict(zip(readers, torch.autograd.grad(value.sum(), [store[n] for n in readers])))
    per_group = [sum(grads[n] for n in group) for group in groups]  # q, k and v: one reader
    per_group = [g if g.ndim == 4 else g[:, :, None] for g in per_group]
    with torch.no_grad():
        written = sites.writers({k: v.detach() for k, v in store.items() if k in writers})
    return torch.cat(per_group, 2), logits.detach(), written


def _attribute_chunk(model, clean: Tensor, corrupt: Tensor, metric: Callable, steps: int):
    device = model_device(model)
    clean, corrupt = clean.to(device), corrupt.to(device)
    with _sites(model) as sites:
        with torch.no_grad():
            writers = set(sites.writer_hooks())
            corrupt_logits, cache = sites.run.run_with_cache(corrupt, names_filter=lambda n: n in writers)
            corrupt_writers = sites.writers(dict(cache.items()))
            corrupt_embed = cache["hook_embed"]
            metric_corrupt = metric(corrupt_logits).detach()
            del cache
        grad_sum = None
        for k in range(1, steps + 1):
            alpha = k / steps
            # At alpha = 1 the input is left untouched, so the last step is exactly EAP's gradient.
            embed_at = None if k == steps else (lambda act, a=alpha: corrupt_embed + a * (act - corrupt_embed))
            grads, logits, clean_writers = _reader_grads(sites, clean, metric, embed_at)
            grad_sum = grads if grad_sum is None else grad_sum + grads
    delta = corrupt_writers - clean_writers
    eap = torch.einsum("bpwd,bprd->bpwr", delta, grads)
    eap_ig = eap if steps == 1 else torch.einsum("bpwd,bprd->bpwr", delta, grad_sum / steps)
    edges = Graph.of(model).edges.to(eap.device)
    zero = torch.zeros((), device=eap.device)
    with torch.no_grad():
        metric_clean = metric(logits)
    return (eap.where(edges, zero).cpu(), eap_ig.where(edges, zero).cpu(), metric_clean.cpu(),
            metric_corrupt.cpu())


def _group_offsets(model) -> tuple[list[int], list[int]]:
    """Start columns of the writer groups (embed, heads 0, MLP 0, ...) and of the reader groups
    (heads 0, MLP 0, ..., logits), with the total as the last entry."""
    n_heads = model.cfg.n_heads
    writers, readers = [0, 1], [0]
    for _ in range(model.cfg.n_layers):
        writers += [writers[-1] + n_heads, writers[-1] + n_heads + 1]
        readers += [readers[-1] + n_heads, readers[-1] + n_heads + 1]
    return writers, readers + [readers[-1] + 1]


@torch.no_grad()
def patched_logits(model, clean: Int[Tensor, "batch pos"],
                   corrupt_writers: Float[Tensor, "batch pos writer d_model"],
                   removed: Float[Tensor, "batch pos writer reader"],
                   clean_writers: Float[Tensor, "batch pos writer d_model"] | None = None
                   ) -> Float[Tensor, "batch pos vocab"]:
    """Logits of the clean run in which each reader's input at each position receives, from
    every writer with ``removed == 1`` there, the writer's corrupted output instead of its
    output in this run (exact edge patching). Each row may remove its own edges, so several
    circuits run in one batch. With the clean run's ``clean_writers``, the layers before the
    first one that reads a removed edge are not rerun (they are the clean run): the residual
    there is the sum of the clean writers' outputs and biases.

    >>> from memlens.models import ModelConfig, build_model
    >>> from memlens.tasks import make_task
    >>> task = make_task("fda", preset="tiny")
    >>> net = build_model(ModelConfig(n_layers=1, d_model=16, n_heads=2), task, seed=0)
    >>> toks = task.generate(seed=0).test.tokens[:2]
    >>> none_removed = torch.zeros(2, toks.shape[1], 4, 4)
    >>> logits = patched_logits(net, toks, writer_outputs(net, toks[[1, 0]]), none_removed)
    >>> bool(torch.allclose(logits, net(toks), atol=1e-5))
    True
    """
    device = model_device(model)
    clean, corrupt_writers, removed = clean.to(device), corrupt_writers.to(device), removed.to(device)
    w_off, r_off = _group_offsets(model)
    used = removed.flatten(0, 1).any(0)  # (writer, reader): removed anywhere in the batch
    group_of = [g for g in range(len(w_off) - 1) for _ in range(w_off[g], w_off[g + 1])]
    current: dict[str, Tensor] = {}
    deltas: list[Tensor] = []  # per writer group so far: this run's output minus the corrupted one
    fixes: dict[int, Tensor | None] = {}

    def record(act, hook):
        current[hook.name] = act
        return act

    def update_deltas(sites: _Sites) -> None:
        group_hooks = sites.writer_hooks()[1:]  # [embed (its second hook), heads 0, MLP 0, ...]
        while len(deltas) < len(group_hooks):
            g = len(deltas)
            if g == 0 and "hook_pos_embed" in current:
                out = (current["hook_embed"] + current["hook_pos_embed"])[:, :, None]
            elif g > 0 and group_hooks[g] in current:
                out = sites.writer_group(group_hooks[g], current[group_hooks[g]])
            else:
                return
            deltas.append(out - corrupt_writers[:, :, w_off[g]: w_off[g + 1]])

    def fix_for(sites: _Sites, cols: slice) -> Tensor | None:
        """(b, p, readers, d): what to subtract from the readers' inputs (None: nothing)."""
        update_deltas(sites)
        fix = None
        for w in range(w_off[len(deltas)]):
            if used[w, cols].any():  # skip writers with nothing removed here
                # A loop over writers: einsum would run one tiny matmul per (row, position).
                g = group_of[w]
                delta, weight = deltas[g][:, :, w - w_off[g], None], removed[:, :, w, cols, None]
                fix = delta * weight if fix is None else fix.addcmul_(delta, weight)
        return fix

    def patch(sites: _Sites, group: int, first: bool):
        cols = slice(r_off[group], r_off[group + 1])

        def hook(act, hook):
            if first:  # q, k and v of a head read the same input: one fix for the three
                fixes[group] = fix_for(sites, cols)
            fix = fixes[group]
            if fix is None:
                return act
            return act - (fix if act.ndim == 4 else fix[:, :, 0])
        return hook

    with _sites(model) as sites:
        hooks = [(n, record) for n in sites.writer_hooks()]
        for group, names in enumerate(sites.reader_hooks()):
            hooks += [(name, patch(sites, group, i == 0)) for i, name in enumerate(names)]
        start = 0
        if clean_writers is not None and sites.resumable:
            start = _first_patched_layer(model, used, r_off)
        with sites.run.hooks(fwd_hooks=hooks):
            if start == 0:
                return sites.run(clean)
            clean_writers = clean_writers.to(device)
            for g in range(2 * start + 1):  # embed and the layers skipped: as in the clean run
                deltas.append(clean_writers[:, :, w_off[g]: w_off[g + 1]] - corrupt_writers[:, :, w_off[g]: w_off[g + 1]])
            resid = clean_writers[:, :, : w_off[2 * start + 1]].sum(2)
            resid = resid + sum(sites.params[f"blocks.{layer}.attn.b_O"] for layer in range(start))
            return backend.run_from_layer(sites.run, resid, start)


def _first_patched_layer(model, used: Tensor, r_off: list[int]) -> int:
    """The first layer whose readers have a removed edge (the logits are read after the last
    block, whose output hook they patch: at most ``n_layers - 1``)."""
    last = model.cfg.n_layers - 1
    for group in range(len(r_off) - 1):
        if used[:, r_off[group]: r_off[group + 1]].any():
            return min(group // 2, last)
    return last


def circuit_logits(model, clean: Tensor, corrupt: Tensor, keep: set[tuple[int, int]]) -> Tensor:
    """Logits of the clean run in which every (writer, reader) pair not in ``keep`` carries its
    writer's corrupted output at every position (exact, not linearized)."""
    if clean.shape != corrupt.shape:
        raise AnalysisError(f"clean and corrupt token shapes differ: {tuple(clean.shape)} vs {tuple(corrupt.shape)}")
    graph = Graph.of(model)
    removed = graph.edges.clone()
    for w, r in keep:
        removed[w, r] = False
    removed = removed.float().expand(*clean.shape, -1, -1)
    return patched_logits(model, clean, writer_outputs(model, corrupt), removed)


@dataclass
class EdgeScores(Result):
    graph: Graph
    scores: Tensor  # (n_writers, n_readers); 0 where there is no edge
    metric_clean: float
    metric_corrupt: float

    def edge_list(self) -> list[tuple[int, int]]:
        return [tuple(e) for e in self.graph.edges.nonzero().tolist()]

    def top(self, k: int) -> set[tuple[int, int]]:
        """The k edges with the largest |score|."""
        flat = self.scores.abs().where(self.graph.edges, torch.tensor(-1.0)).flatten()
        if not 0 < k <= int(self.graph.edges.sum()):
            raise AnalysisError(f"k={k} is invalid: the graph has {int(self.graph.edges.sum())} edges")
        idx = flat.topk(k).indices
        n_readers = self.scores.shape[1]
        return {(int(i) // n_readers, int(i) % n_readers) for i in idx}

    def node_scores(self) -> pd.Series:
        """Per component (head, MLP, embedding, logits): the summed |score| of its edges, in
        and out: how much of the attributed effect flows through it."""
        s = self.scores.abs()
        out = {name: float(s[i].sum()) for i, name in enumerate(self.graph.writers)}
        for j, name in enumerate(self.graph.readers):
            out[name] = out.get(name, 0.0) + float(s[:, j].sum())
        return pd.Series(out).sort_values(ascending=False)

    def to_frame(self) -> pd.DataFrame:
        rows = [{"writer": self.graph.writers[w], "reader": self.graph.readers[r],
                 "score": float(self.scores[w, r])} for w, r in self.edge_list()]
        return pd.DataFrame(rows).sort_values("score", key=abs, ascending=False, ignore_index=True)

    def summary(self) -> dict:
        return {"n_edges": int(self.graph.edges.sum()), "metric_clean": self.metric_clean,
                "metric_corrupt": self.metric_corrupt, "top": self.to_frame().head(20).to_dict(orient="records")}

    def figure(self):
        import plotly.express as px

        return px.imshow(self.scores.numpy(), x=self.graph.readers, y=self.graph.writers,
                         color_continuous_scale="RdBu", color_continuous_midpoint=0,
                         labels={"x": "reader", "y": "writer", "color": "score"},
                         title="Edge attribution scores")


def edge_attribution(model, clean: Tensor, corrupt: Tensor, metric: Callable[[Tensor], Tensor],
                     steps: int = 1) -> EdgeScores:
    """EAP (``steps=1``) or EAP-IG scores of every (writer, reader) pair, summed over positions,
    for a scalar ``metric(logits)`` (e.g. the mean log-probability of the labels) between the
    ``clean`` and ``corrupt`` token batches: the first-order change of the metric when the pair
    is corrupted at every position, divided by the number of examples (the scale this function
    has always had, and that tests/cross_version records)."""
    if clean.shape != corrupt.shape:
        raise AnalysisError(f"clean and corrupt token shapes differ: {tuple(clean.shape)} vs {tuple(corrupt.shape)}")
    # One chunk: a scalar metric (a mean over the batch) does not split across chunks.
    att = attribute(model, clean, corrupt, metric, steps=steps, chunk_size=len(clean))
    scores = (att.eap_ig if steps > 1 else att.eap).sum((0, 1)) / len(clean)
    return EdgeScores(Graph.of(model), scores, float(att.metric_clean), float(att.metric_corrupt))


def faithfulness(model, clean: Tensor, corrupt: Tensor, keep: set[tuple[int, int]],
                 metric: Callable[[Tensor], Tensor]) -> float:
    """Share of the clean-minus-corrupt metric that the circuit ``keep`` recovers."""
    with torch.no_grad():
        m_clean = float(metric(model(clean.to(model_device(model)))))
        m_corrupt = float(metric(model(corrupt.to(model_device(model)))))
    m_circuit = float(metric(circuit_logits(model, clean, corrupt, keep)))
    if abs(m_clean - m_corrupt) < 1e-9:
        raise AnalysisError("the metric is the same on clean and corrupt inputs: nothing to recover")
    return (m_circuit - m_corrupt) / (m_clean - m_corrupt)


def overlap(a: EdgeScores, b: EdgeScores, k: int, random_draws: int = 200, seed: int = 0) -> dict:
    """IoU of the two top-k circuits, weighted Jaccard of |scores| over all edges, and the mean
    IoU of two random k-edge sets (the baseline)."""
    top_a, top_b = a.top(k), b.top(k)
    iou = len(top_a & top_b) / len(top_a | top_b)
    edges = a.graph.edges
    sa = a.scores.abs()[edges]
    sb = b.scores.abs()[edges]
    sa, sb = sa / sa.sum().clamp(min=1e-12), sb / sb.sum().clamp(min=1e-12)
    weighted = float(torch.minimum(sa, sb).sum() / torch.maximum(sa, sb).sum().clamp(min=1e-12))
    n = int(edges.sum())
    gen = torch.Generator().manual_seed(seed)
    ious = []
    for _ in range(random_draws):
        x = set(torch.randperm(n, generator=gen)[:k].tolist())
        y = set(torch.randperm(n, generator=gen)[:k].tolist())
        ious.append(len(x & y) / len(x | y))
    return {"k": k, "n_edges": n, "iou": iou, "weighted_jaccard": weighted,
            "random_iou": sum(ious) / len(ious), "iou_minus_random": iou - sum(ious) / len(ious)}


# --- growing connected circuits (numpy only: the scorecard regrows them without a model) ---

def _edges_into(edge_reader: np.ndarray) -> dict[int, np.ndarray]:
    return {int(node): np.flatnonzero(edge_reader == node) for node in np.unique(edge_reader)}


def growth_order(scores: np.ndarray, edge_writer: np.ndarray, edge_reader: np.ndarray, root: int,
                 k: int | None = None) -> np.ndarray:
    """The first ``k`` (default all reachable) edges of the circuit grown from ``root`` (the
    logits): at each step the eligible edge with the largest ``|score|`` joins (ties: lowest
    edge index), where an edge is eligible once its reader is ``root`` or the writer of an
    edge already in. Prefixes of this order are the circuits of each size.

    >>> growth_order(np.array([5.0, -9.0, 1.0]), np.array([1, 0, 0]), np.array([2, 2, 1]), root=2).tolist()
    [1, 0, 2]
    """
    absolute = np.abs(np.asarray(scores, dtype=float))
    ranked = np.lexsort((np.arange(len(absolute)), -absolute))  # by |score| down, then index
    by_reader = {node: ranked[np.isin(ranked, members)] for node, members in _edges_into(edge_reader).items()}
    heap: list[tuple[float, int, int, int]] = []
    active: set[int] = set()

    def activate(node: int) -> None:
        if node not in active and node in by_reader:
            active.add(node)
            first = int(by_reader[node][0])
            heapq.heappush(heap, (-absolute[first], first, node, 0))

    activate(int(root))
    limit = len(absolute) if k is None else int(k)
    out: list[int] = []
    while heap and len(out) < limit:
        _, e, node, i = heapq.heappop(heap)
        out.append(e)
        activate(int(edge_writer[e]))
        if i + 1 < len(by_reader[node]):
            nxt = int(by_reader[node][i + 1])
            heapq.heappush(heap, (-absolute[nxt], nxt, node, i + 1))
    return np.array(out, dtype=int)


def random_circuit(edge_writer: np.ndarray, edge_reader: np.ndarray, root: int, k: int,
                   rng: np.random.Generator) -> np.ndarray:
    """A connected circuit of ``k`` edges grown from ``root``, each step joining an edge drawn
    uniformly from the eligible ones.

    >>> sorted(random_circuit(np.array([1, 0, 0]), np.array([2, 2, 1]), 2, 3, np.random.default_rng(0)).tolist())
    [0, 1, 2]
    """
    into = _edges_into(edge_reader)
    eligible = list(into.get(int(root), []))
    active = {int(root)}
    out: list[int] = []
    while eligible and len(out) < k:
        i = int(rng.integers(len(eligible)))
        eligible[i], eligible[-1] = eligible[-1], eligible[i]
        e = int(eligible.pop())
        out.append(e)
        node = int(edge_writer[e])
        if node not in active:
            active.add(node)
            eligible.extend(into.get(node, []))
    return np.array(out, dtype=int)


def iou(a, b) -> float:
    """Intersection over union of two edge sets (1 for two empty sets)."""
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    return len(a & b) / len(a | b) if a | b else 1.0
