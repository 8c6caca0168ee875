"""The Fourier / IPR analysis: ``ipr`` on activations with a known spectrum, and the pruning study.

IPR (memlens/analysis/fourier.py) is ``sum(share ** 2)`` over the power shares of the neuron's
(multi-dimensional) DFT without the constant term, a frequency and its conjugate counted as one
real frequency. Its maximum is 1, reached by exactly one real frequency (a sinusoid of any phase);
its minimum, ``1 / n`` over ``n`` real frequencies, by a flat spectrum (a single-cell spike).
A neuron constant over the inputs has no spectrum: NaN.
"""

import pytest
import torch

from memlens.analysis import AnalysisError
from memlens.analysis.fourier import cyclic_inputs, fourier_neurons, input_values, ipr
from memlens.backend import load_state_dict, state_dict
from memlens.models import ModelConfig, build_model
from memlens.tasks import make_task


def _grid(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair ``(a, b)`` of residues mod ``p``, as the values of two cyclic inputs."""
    a = torch.arange(p).repeat(p)
    b = torch.arange(p).repeat_interleave(p)
    return a, b


def _wave(a: torch.Tensor, b: torch.Tensor, p: int, ka: int, kb: int, phase: float) -> torch.Tensor:
    return torch.cos(2 * torch.pi * (ka * a + kb * b).double() / p + phase)


@pytest.mark.parametrize("p", [13, 12])
def test_one_real_frequency_has_ipr_one(p):
    """Any single real frequency, whatever its phase, on one input or both, reaches the maximum 1.
    With an even ``p`` this includes the self-conjugate frequency ``p / 2`` (cos(pi * a)), which
    must score the same as every other single frequency."""
    a, b = _grid(p)
    waves = [_wave(a, b, p, ka, kb, phase)
             for ka, kb in [(1, 0), (3, 0), (0, 5), (p // 2, 0), (2, 3), (p // 2, p // 2)]
             for phase in (0.0, 0.7, -2.0)]
    scores, mode = ipr(torch.stack(waves, 1).float(), torch.stack([a, b], 1), [p, p])
    assert mode == "grid"
    torch.testing.assert_close(scores, torch.ones(len(waves)), atol=1e-5, rtol=0)


def test_two_equal_frequencies_have_ipr_half():
    p = 13
    a, b = _grid(p)
    acts = (_wave(a, b, p, 2, 0, 0.3) + _wave(a, b, p, 0, 5, 1.1))[:, None].float()
    scores, _ = ipr(acts, torch.stack([a, b], 1), [p, p])
    assert float(scores[0]) == pytest.approx(0.5, abs=1e-5)


def test_flat_spectrum_has_the_minimum_and_noise_is_near_it():
    """A spike on one cell has a flat spectrum: the minimum ``1 / n``, with ``n = (p**2 - 1) / 2``
    real frequencies for an odd ``p``. White noise has exponential-like powers: IPR near ``2 / n``,
    far below the periodic neuron's 1."""
    p = 13
    n_real = (p * p - 1) // 2
    a, b = _grid(p)
    spike = torch.zeros(p * p, 1)
    spike[40] = 3.0
    scores, _ = ipr(spike, torch.stack([a, b], 1), [p, p])
    assert float(scores[0]) == pytest.approx(1 / n_real, rel=1e-5)
    noise = torch.randn(p * p, 200, generator=torch.Generator().manual_seed(0))
    scores, _ = ipr(noise, torch.stack([a, b], 1), [p, p])
    assert bool((scores >= 1 / n_real - 1e-7).all()) and float(scores.max()) < 4 / n_real
    assert 1.85 / n_real < float(scores.mean()) < 2.15 / n_real


def test_ipr_invariant_to_scale_offset_and_repeats():
    p = 11
    a, b = _grid(p)
    values = torch.stack([a, b], 1)
    gen = torch.Generator().manual_seed(1)
    acts = torch.cat([_wave(a, b, p, 3, 0, 0.2)[:, None].float() + 0.3 * torch.randn(p * p, 1, generator=gen),
                      torch.randn(p * p, 3, generator=gen)], 1)
    base, _ = ipr(acts, values, [p, p])
    assert bool((base < 0.99).all())  # not a degenerate case
    for scale in (1e-3, 7.5, -2.0):
        torch.testing.assert_close(ipr(scale * acts, values, [p, p])[0], base, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ipr(acts + 5.0, values, [p, p])[0], base, atol=1e-6, rtol=1e-4)
    # each cell's examples are averaged: every example twice, shuffled, changes nothing
    order = torch.randperm(2 * p * p, generator=gen)
    twice = ipr(torch.cat([acts, acts])[order], torch.cat([values, values])[order], [p, p])[0]
    torch.testing.assert_close(twice, base, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("max_grid", [100_000, 10])
def test_constant_neuron_has_no_ipr(max_grid):
    """A neuron constant over the inputs (dead, or a fixed non-zero value) has no spectrum: NaN,
    not 0, so that it does not pass for the least periodic neuron."""
    p = 7
    a, b = _grid(p)
    acts = torch.stack([torch.zeros(p * p), torch.full((p * p,), 2.5), _wave(a, b, p, 1, 0, 0.0).float()], 1)
    scores, _ = ipr(acts, torch.stack([a, b], 1), [p, p], max_grid=max_grid)
    assert scores[:2].isnan().all() and float(scores[2]) == pytest.approx(1.0, abs=1e-5)


def test_marginal_mode_when_the_grid_is_too_large():
    p = 13
    a, b = _grid(p)
    acts = torch.stack([_wave(a, b, p, 4, 0, 0.5), _wave(a, b, p, 4, 0, 0.5) + _wave(a, b, p, 0, 2, 0.0)],
                       1).float()
    scores, mode = ipr(acts, torch.stack([a, b], 1), [p, p], max_grid=p * p - 1)
    assert mode == "marginal"
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.5]), atol=1e-5, rtol=0)


# -- the pruning study on a tiny (untrained) model ------------------------------------------------

@pytest.fixture(scope="module")
def modadd_tiny():
    task = make_task("modadd", preset="tiny")
    model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=0).eval()
    data = task.generate(0)
    return task, model, data


def _accuracy(model, examples, layer: int, pruned: torch.Tensor) -> float:
    """Accuracy with ``pruned`` neurons' ``mlp.hook_post`` zeroed at every position."""
    def zero(act, hook):
        act[..., pruned] = 0.0
        return act

    with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", zero)]):
        logits = model(examples.tokens)[:, examples.answer_pos]
    return float((logits.argmax(-1) == examples.labels).all(-1).float().mean())


def test_pruning_groups_shares_and_values(modadd_tiny):
    task, model, data = modadd_tiny
    every = data.train.concat([data.train, data.test])
    groups = {"train_clean": data.splits["train_clean"], "test": data.test}
    res = fourier_neurons(model, every, groups, shares=(0.1, 0.25), random_draws=2, seed=3)
    d_mlp = model.cfg.d_mlp
    assert (res.layer, res.position, res.mode, res.scores.shape) == (0, 4, "grid", (d_mlp,))
    frame = res.pruning
    assert len(frame) == 2 * len(groups) * 3
    assert set(frame["metric"]) == set(groups) and set(frame["order"]) == {"low IPR", "random"}
    assert sorted(set(frame["share"])) == [0.0, 0.1, 0.25]
    # the scores are the IPR of the neurons' activations at the answer-predicting position
    _, cache = model.run_with_cache(every.tokens, names_filter="blocks.0.mlp.hook_post")
    acts = cache["blocks.0.mlp.hook_post"][:, 4]
    want, _ = ipr(acts, input_values(every, cyclic_inputs(every)), [task.config.p] * 2)
    torch.testing.assert_close(res.scores, want, atol=1e-5, rtol=1e-4, equal_nan=True)
    # share 0: the unpruned accuracy; low IPR: the lowest round(share * n) of the n scored neurons
    scored = (~res.scores.isnan()).nonzero().flatten()
    ranked = scored[res.scores[scored].argsort()]
    for name, ex in groups.items():
        rows = frame[frame["metric"] == name].set_index(["order", "share"])["accuracy"]
        none = torch.zeros(0, dtype=torch.long)
        assert rows[("low IPR", 0.0)] == rows[("random", 0.0)] == _accuracy(model, ex, 0, none)
        for share in (0.1, 0.25):
            low = ranked[: round(share * len(scored))]
            assert rows[("low IPR", share)] == pytest.approx(_accuracy(model, ex, 0, low), abs=1e-9)
            assert 0.0 <= rows[("random", share)] <= 1.0
    again = fourier_neurons(model, every, groups, shares=(0.1, 0.25), random_draws=2, seed=3)
    assert again.pruning.equals(frame)
    assert set(res.summary()) >= {"layer", "position", "mode", "ipr_quartiles", "pruning", "n_constant"}
    assert list(res.to_frame()["neuron"]) == list(range(d_mlp))


def test_dead_neurons_are_never_pruned(modadd_tiny):
    """Dead units (ReLU input always negative) have no IPR: pruning them would change nothing
    and make the low-IPR curve look harmless, so neither order picks them."""
    task, _, data = modadd_tiny
    model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2), task, seed=1).eval()
    dead = torch.arange(0, 128, 4)  # 32 of 128 units
    weights = state_dict(model)
    weights["blocks.0.mlp.W_in"][:, dead] = 0.0
    weights["blocks.0.mlp.b_in"][dead] = -1.0
    load_state_dict(model, weights)
    every = data.train.concat([data.train, data.test])
    groups = {"test": data.test}
    res = fourier_neurons(model, every, groups, shares=(0.25, 0.5), random_draws=3)
    constant = res.scores.isnan()
    assert bool(constant[dead].all()) and res.summary()["n_constant"] == int(constant.sum())
    n_live = int((~constant).sum())
    assert 32 <= n_live <= 96  # an untrained model has dead units of its own at the answer position
    ranked = res.scores.argsort()[:n_live]  # NaN sorts last: the live units, lowest IPR first
    assert not constant[ranked].any()
    rows = res.pruning.set_index(["order", "share"])["accuracy"]
    for share in (0.25, 0.5):
        k = round(share * n_live)
        assert rows[("low IPR", share)] == pytest.approx(_accuracy(model, data.test, 0, ranked[:k]), abs=1e-9)
    assert rows[("low IPR", 0.0)] == _accuracy(model, data.test, 0, dead)  # dead units: a no-op


@pytest.mark.parametrize("kwargs,needle", [
    ({"shares": (0.1, 0.0)}, r"shares \[0\.0\]"),
    ({"shares": (1.5,)}, r"shares \[1\.5\]"),
    ({"shares": (-0.1,)}, r"shares \[-0\.1\]"),
    ({"layer": 1}, r"layer\(s\) \[1\] out of range"),
    ({"layer": -1}, r"layer\(s\) \[-1\] out of range"),
    ({"random_draws": 0}, r"random_draws=0 is invalid"),
])
def test_bad_input_named(modadd_tiny, kwargs, needle):
    _, model, data = modadd_tiny
    with pytest.raises(AnalysisError, match=needle):
        fourier_neurons(model, data.train, data.splits, **kwargs)


def test_cyclic_inputs_from_the_task_and_refused_without():
    ex = make_task("modadd", preset="tiny").generate(0).train[:20]
    assert cyclic_inputs(ex) == {"a": (1, 23), "b": (3, 23)}
    assert torch.equal(input_values(ex, cyclic_inputs(ex)), ex.intermediates["operand"])
    fda = make_task("fda", preset="tiny").generate(0).train[:5]
    with pytest.raises(AnalysisError, match="fda task declares no cyclic inputs"):
        cyclic_inputs(fda)
    ex.origin = None
    with pytest.raises(AnalysisError, match="no task origin"):
        cyclic_inputs(ex)
