"""Edge attribution patching: exact circuit runs at the extremes, attribution against real
single-edge patching, overlap and faithfulness."""

import numpy as np
import pytest
import torch

from memlens.analysis import AnalysisError
from memlens.analysis.circuits import Graph, circuit_logits, edge_attribution, faithfulness, overlap
from tests.analysis.helpers import label_logprob_metric



@pytest.fixture(scope="module")
def setup(fda_tiny):
    _, model, data = fda_tiny
    clean = data.test[:24]
    corrupt = data.test[24:48].tokens
    return model, clean, corrupt


def test_graph_edges_only_go_forward(fda_tiny):
    _, model, _ = fda_tiny
    g = Graph.of(model)  # 2 layers x 2 heads
    assert g.writers == ["embed", "L0.H0", "L0.H1", "L0.mlp", "L1.H0", "L1.H1", "L1.mlp"]
    assert g.readers[-1] == "logits" and len(g.readers) == 2 * 3 + 1
    assert g.edges[0].all()  # the embedding feeds every reader
    assert not g.edges[g.writers.index("L0.H0"), g.readers.index("L0.H1")]
    assert g.edges[g.writers.index("L0.H0"), g.readers.index("L0.mlp")]
    assert not g.edges[g.writers.index("L1.mlp"), g.readers.index("L1.H0")]


def test_all_edges_give_the_clean_run_and_none_the_corrupt_run(setup):
    model, clean, corrupt = setup
    g = Graph.of(model)
    every = {tuple(e) for e in g.edges.nonzero().tolist()}
    with torch.no_grad():
        want_clean, want_corrupt = model(clean.tokens), model(corrupt)
    torch.testing.assert_close(circuit_logits(model, clean.tokens, corrupt, every), want_clean,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(circuit_logits(model, clean.tokens, corrupt, set()), want_corrupt,
                               atol=1e-4, rtol=0)
    assert not model.cfg.use_split_qkv_input and not model.cfg.use_attn_result  # restored


def test_attribution_tracks_real_single_edge_patching(setup):
    model, clean, corrupt = setup
    metric = label_logprob_metric(clean)
    scores = edge_attribution(model, clean.tokens, corrupt, metric)
    every = {tuple(e) for e in scores.graph.edges.nonzero().tolist()}
    with torch.no_grad():
        base = float(metric(model(clean.tokens)))
    approx, actual = [], []
    for edge in sorted(every):
        approx.append(float(scores.scores[edge]))
        actual.append(float(metric(circuit_logits(model, clean.tokens, corrupt, every - {edge}))) - base)
    corr = float(np.corrcoef(approx, actual)[0, 1])
    print(f"attribution vs actual single-edge patching: Pearson r = {corr:.3f} over {len(every)} edges")
    assert corr > 0.7


def test_overlap_and_faithfulness(setup):
    model, clean, corrupt = setup
    metric = label_logprob_metric(clean)
    a = edge_attribution(model, clean.tokens, corrupt, metric)
    nodes = a.node_scores()
    assert set(nodes.index) == set(a.graph.writers) | set(a.graph.readers)
    assert nodes.sum() == pytest.approx(2 * float(a.scores.abs().sum()), rel=1e-5)  # each edge twice
    same = overlap(a, a, k=10)
    assert same["iou"] == 1.0 and same["weighted_jaccard"] == pytest.approx(1.0)
    assert 0 <= same["random_iou"] < 0.5
    n = int(a.graph.edges.sum())
    every = a.top(n)
    assert faithfulness(model, clean.tokens, corrupt, every, metric) == pytest.approx(1.0, abs=1e-4)
    assert faithfulness(model, clean.tokens, corrupt, set(), metric) == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(AnalysisError, match="k=0 is invalid"):
        a.top(0)
    with pytest.raises(AnalysisError, match="token shapes differ"):
        edge_attribution(model, clean.tokens, corrupt[:3], metric)
