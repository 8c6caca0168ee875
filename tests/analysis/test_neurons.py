import pytest
import torch

from memlens.analysis import AnalysisError
from memlens.analysis.neurons import neuron_table


def test_table_equals_the_full_cache_at_answer_positions(fda_tiny):
    _, model, data = fda_tiny
    ex = data.train[:40]
    table = neuron_table(model, ex, chunk_size=7)  # several chunks, a ragged last one
    _, cache = model.run_with_cache(ex.tokens)
    for li, layer in enumerate(table.layers):
        want = cache[f"blocks.{layer}.mlp.hook_post"][:, ex.answer_pos]
        torch.testing.assert_close(table.acts[:, li], want, atol=1e-6, rtol=0)
    assert table.positions == ex.answer_pos.tolist()


def test_early_layers_only_stop_the_forward_and_agree(fda_tiny):
    _, model, data = fda_tiny
    ex = data.train[:20]
    both = neuron_table(model, ex)
    first = neuron_table(model, ex, layers=[0], positions=[2, 5])
    torch.testing.assert_close(first.acts[:, 0], neuron_table(model, ex, positions=[2, 5]).acts[:, 0])
    assert first.acts.shape == (20, 1, 2, model.cfg.d_mlp)
    assert both.acts.shape[1] == model.cfg.n_layers


def test_frame_and_groups(fda_tiny):
    _, model, data = fda_tiny
    ex = data.train[:200]
    assert ex.is_noisy.any() and (~ex.is_noisy).any()
    table = neuron_table(model, ex, layers=[1])
    frame = table.to_frame()
    assert len(frame) == 2 * len(table.positions) * model.cfg.d_mlp
    clean = frame[(frame.group == "clean") & (frame.neuron == 3) & (frame.position == table.positions[0])]
    expected = table.acts[~ex.is_noisy][:, 0, 0, 3].mean()
    assert float(clean["mean"].iloc[0]) == pytest.approx(float(expected), abs=1e-6)
    assert table.figure().data


def test_bad_input(fda_tiny):
    _, model, data = fda_tiny
    with pytest.raises(AnalysisError, match=r"layer\(s\) \[7\] out of range"):
        neuron_table(model, data.train[:5], layers=[7])
    with pytest.raises(AnalysisError, match=r"position\(s\) \[99\] out of range"):
        neuron_table(model, data.train[:5], positions=[99])
    with pytest.raises(AnalysisError, match="chunk_size=0"):
        neuron_table(model, data.train[:5], chunk_size=0)
