"""Circuits by edge attribution patching (EAP), their overlap, and their faithfulness.

Nodes write into the residual stream (``embed``: token + position embeddings; each head
``L{l}.H{h}``: ``attn.hook_result``; each MLP ``L{l}.mlp``: ``hook_mlp_out``) or read from it
(each head's query, key and value inputs, ``hook_{q,k,v}_input``; each MLP's input,
``hook_mlp_in``; the unembedding, ``logits``, reading the final residual). An edge joins a
writer to a later reader. Its attribution score (Syed et al. 2023, after Nanda's attribution
patching) is the first-order change of the metric when the reader receives the writer's
corrupted output instead of its clean one: ``(a_u(corrupt) - a_u(clean)) . d metric / d input_v``,
summed over positions and averaged over examples, from one clean forward and backward pass and
one corrupted forward pass. TransformerLens has no EAP, so it is implemented here on its split
hooks (``use_split_qkv_input``, ``use_attn_result``, ``use_hook_mlp_in``), which
:func:`memlens.backend.split_hooks` provides on either TransformerLens version.

A circuit is the top-k edges by |score|. :func:`circuit_logits` runs the model with every other
edge fed its corrupted value (exact patching, not the approximation): with all edges kept it
reproduces the clean run, with none the corrupted one (both tested), so faithfulness
``(M(circuit) - M(corrupt)) / (M(clean) - M(corrupt))`` is the share of the metric the circuit
recovers. Overlap of two circuits: IoU of their edge sets and weighted Jaccard of |scores|,
beside the IoU of random edge sets of the same size.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import pandas as pd
import torch
from torch import Tensor

from memlens import backend
from memlens.analysis.common import AnalysisError, Result, model_device


@dataclass(frozen=True)
class Graph:
    """Writers, readers and which (writer, reader) pairs are edges, for a model's shape."""

    writers: list[str]
    readers: list[str]
    edges: Tensor  # (n_writers, n_readers) bool

    @classmethod
    def of(cls, model) -> "Graph":
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


def _split_hooks(model):
    """Per-head q/k/v inputs, per-head results and a separate MLP input: a context yielding the
    model to run inside it (the backend's, restored afterwards)."""
    return backend.split_hooks(model)


def _writer_hooks(model) -> list[str]:
    names = ["hook_embed", "hook_pos_embed"]
    for layer in range(model.cfg.n_layers):
        names += [f"blocks.{layer}.attn.hook_result", f"blocks.{layer}.hook_mlp_out"]
    return names


def _writers_from(cache: dict[str, Tensor], model) -> Tensor:
    """(batch, pos, n_writers, d_model) in Graph order, from a complete cache."""
    return _partial_writers(cache, model)


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


def edge_attribution(model, clean: Tensor, corrupt: Tensor, metric: Callable[[Tensor], Tensor]
                     ) -> EdgeScores:
    """EAP scores of every edge for ``metric(logits)`` (a scalar, e.g. the mean log-probability
    of the labels) between the ``clean`` and ``corrupt`` token batches."""
    if clean.shape != corrupt.shape:
        raise AnalysisError(f"clean and corrupt token shapes differ: {tuple(clean.shape)} vs {tuple(corrupt.shape)}")
    graph = Graph.of(model)
    device = model_device(model)
    clean, corrupt = clean.to(device), corrupt.to(device)
    writer_names = set(_writer_hooks(model))
    n_layers = model.cfg.n_layers
    with _split_hooks(model) as model:
        with torch.no_grad():
            corrupt_logits, cache = model.run_with_cache(corrupt, names_filter=lambda n: n in writer_names)
            corrupt_writers = _writers_from(cache, model)
            metric_corrupt = float(metric(corrupt_logits))
            del cache
        store: dict[str, Tensor] = {}

        def keep(act, hook):
            if hook.name not in writer_names:
                act.retain_grad()
            store[hook.name] = act
            return act

        reader_names = []
        for layer in range(n_layers):
            reader_names += [f"blocks.{layer}.hook_{x}_input" for x in "qkv"] + [f"blocks.{layer}.hook_mlp_in"]
        final = f"blocks.{n_layers - 1}.hook_resid_post"
        hooks = [(n, keep) for n in list(writer_names) + reader_names + [final]]
        with model.hooks(fwd_hooks=hooks):
            value = metric(model(clean))
            value.backward()
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            delta = corrupt_writers - _writers_from({k: v.detach() for k, v in store.items()}, model)
            grads = []
            for layer in range(n_layers):
                grads.append(sum(store[f"blocks.{layer}.hook_{x}_input"].grad for x in "qkv"))  # (b, p, H, d)
                grads.append(store[f"blocks.{layer}.hook_mlp_in"].grad[:, :, None])
            grads.append(store[final].grad[:, :, None])
            reader_grads = torch.cat(grads, 2)  # (b, p, n_readers, d)
            scores = torch.einsum("bpwd,bprd->wr", delta, reader_grads) / len(clean)
    scores = scores.where(graph.edges.to(scores.device), torch.zeros(())).cpu()
    return EdgeScores(graph, scores, float(value.detach()), metric_corrupt)


@torch.no_grad()
def circuit_logits(model, clean: Tensor, corrupt: Tensor, keep: set[tuple[int, int]]) -> Tensor:
    """Logits of the clean run in which every edge not in ``keep`` carries its writer's corrupted
    output (exact, not linearized)."""
    graph = Graph.of(model)
    device = model_device(model)
    clean, corrupt = clean.to(device), corrupt.to(device)
    removed = graph.edges.clone()
    for w, r in keep:
        removed[w, r] = False
    removed = removed.float().to(device)
    writer_names = set(_writer_hooks(model))
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    with _split_hooks(model) as model:
        _, cache = model.run_with_cache(corrupt, names_filter=lambda n: n in writer_names)
        corrupt_writers = _writers_from(cache, model)
        del cache
        current: dict[str, Tensor] = {}

        def delta_so_far() -> Tensor:
            """(b, p, n_writers, d): current minus corrupted writer outputs (0 for writers not
            yet computed: no edge reads them yet)."""
            full = torch.zeros_like(corrupt_writers)
            known = _partial_writers(current, model)
            full[:, :, : known.shape[2]] = known - corrupt_writers[:, :, : known.shape[2]]
            return full

        def record(act, hook):
            current[hook.name] = act
            return act

        def patch_reader(columns: slice, per_head: bool):
            def hook(act, hook):
                fix = torch.einsum("bpwd,wr->bprd", delta_so_far(), removed[:, columns])
                return act - (fix if per_head else fix[:, :, 0])
            return hook

        hooks = [(n, record) for n in writer_names]
        r = 0
        for layer in range(n_layers):
            heads = slice(r, r + n_heads)
            hooks += [(f"blocks.{layer}.hook_{x}_input", patch_reader(heads, True)) for x in "qkv"]
            hooks.append((f"blocks.{layer}.hook_mlp_in", patch_reader(slice(r + n_heads, r + n_heads + 1), False)))
            r += n_heads + 1
        hooks.append((f"blocks.{n_layers - 1}.hook_resid_post", patch_reader(slice(r, r + 1), False)))
        with model.hooks(fwd_hooks=hooks):
            return model(clean)


def _partial_writers(current: dict[str, Tensor], model) -> Tensor:
    """Writer outputs recorded so far in a forward pass (all of them from a complete cache),
    in Graph order."""
    parts = [(current["hook_embed"] + current["hook_pos_embed"])[:, :, None]]
    for layer in range(model.cfg.n_layers):
        if f"blocks.{layer}.attn.hook_result" not in current:
            break
        parts.append(current[f"blocks.{layer}.attn.hook_result"])
        if f"blocks.{layer}.hook_mlp_out" not in current:
            break
        parts.append(current[f"blocks.{layer}.hook_mlp_out"][:, :, None])
    return torch.cat(parts, 2)


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
