import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memlens import load_run, make_run_config, train
from memlens.analysis.counterfactuals import make_counterfactuals
from memlens.analysis.heuristics import MIN_CLEAN
from memlens.analysis.runner import applicable, load_analysis
from memlens.cli import main
from memlens.config import ConfigError
from memlens.tasks import make_task
from memlens.tasks.modadd import ModAddConfig, ModAddTask

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

configs = st.builds(ModAddConfig, p=st.integers(3, 31), train_fraction=st.sampled_from([0.3, 0.5, 0.8]),
                    noise_rate=st.sampled_from([0.0, 0.05, 0.3, 1.0]))


def _residues(task: ModAddTask, ids: torch.Tensor) -> torch.Tensor:
    return ids - task.tokenizer.token_to_id("0")


@SETTINGS
@given(cfg=configs, seed=st.integers(0, 2**31))
def test_labels_noise_split_and_intermediates(cfg, seed):
    task = ModAddTask(cfg)
    data = task.generate(seed)
    train_, test = data.train, data.test
    p, n_train = cfg.p, cfg.n_train
    # the split: every pair (a, b) exactly once, train first; only training labels are noisy
    assert (len(train_), len(test)) == (n_train, p * p - n_train)
    both = torch.cat([train_.intermediates["operand"], test.intermediates["operand"]])
    assert sorted((both[:, 0] * p + both[:, 1]).tolist()) == list(range(p * p))
    assert int(train_.is_noisy.sum()) == round(cfg.noise_rate * n_train) == data.stats["n_noisy"]
    assert not test.is_noisy.any()
    for ex in (train_, test):
        a, b = ex.intermediates["operand"].unbind(1)
        truth = (a + b) % p
        labels = _residues(task, ex.labels[:, 0])
        assert torch.equal(_residues(task, ex.true_labels[:, 0]), truth)
        # clean: the label is (a + b) mod p; noisy: another residue
        assert torch.equal(labels[~ex.is_noisy], truth[~ex.is_noisy])
        assert bool((labels[ex.is_noisy] != truth[ex.is_noisy]).all())
        assert bool(((labels >= 0) & (labels < p)).all())
        # tokens: <bos> a + b = label; the intermediates are those of the tokens
        tok = ex.tokens
        assert tok.shape[1] == task.seq_len == 6 and ex.answer_pos.tolist() == [4]
        assert torch.equal(_residues(task, tok[:, 1]), a) and torch.equal(_residues(task, tok[:, 3]), b)
        assert [task.tokenizer.id_to_token(int(t)) for t in tok[0, [0, 2, 4]]] == ["<bos>", "+", "="]
        assert torch.equal(tok[:, ex.answer_token_pos], ex.labels)
        assert torch.equal(ex.intermediates["raw_sum"], a + b)
        assert torch.equal(ex.intermediates["wraps"], (a + b >= p).long())
        assert torch.equal(ex.intermediates["raw_sum"] % p, truth)
        assert torch.equal(task.neuron_features(ex)["a + b mod p"][1], truth)
    declared = {spec.name for spec in task.intermediates()}
    assert declared == set(train_.intermediates)


def test_noise_fraction_and_noisy_labels_spread_over_every_other_residue():
    task = ModAddTask(ModAddConfig(p=31, train_fraction=0.8, noise_rate=0.3))
    train_ = task.generate(5).train
    noisy = train_[train_.is_noisy]
    assert abs(len(noisy) / len(train_) - 0.3) < 1 / len(train_)
    offset = (_residues(task, noisy.labels[:, 0]) - _residues(task, noisy.true_labels[:, 0])) % 31
    counts = torch.bincount(offset, minlength=31)
    assert counts[0] == 0 and bool((counts[1:] > 0).all())  # 231 draws over 30 offsets
    assert int(counts.max()) < 4 * len(noisy) / 30


def test_same_seed_same_data_other_seed_other_data():
    task = make_task("modadd", preset="tiny")
    a, b, c = task.generate(7), task.generate(7), task.generate(8)
    assert a.content_hash == b.content_hash and a.content_hash != c.content_hash
    assert torch.equal(a.train.tokens, b.train.tokens) and torch.equal(a.train.is_noisy, b.train.is_noisy)
    assert not torch.equal(a.train.tokens, c.train.tokens)
    # the noise rate changes which labels are noisy, never the split
    quiet = make_task("modadd", preset="tiny", noise_rate=0.0).generate(7)
    assert torch.equal(quiet.train.intermediates["operand"], a.train.intermediates["operand"])
    assert not quiet.train.is_noisy.any()


def test_preset_and_doctest_numbers():
    task = make_task("modadd", preset="tiny")
    assert (task.config.p, task.config.train_fraction, task.config.noise_rate) == (23, 0.6, 0.05)
    data = task.generate(0)
    assert data.stats == {"n_train": 317, "n_test": 212, "n_noisy": 16, "seq_len": 6,
                          "vocab_size": len(task.tokenizer)}
    assert task.cyclic_inputs() == {"a": (1, 23), "b": (3, 23)}


@pytest.mark.parametrize("field,value", [
    ("p", 2), ("p", 1), ("p", 0), ("p", -5), ("p", 1001),
    ("noise_rate", 1.5), ("noise_rate", -0.1),
    ("train_fraction", 0.0), ("train_fraction", 1.0), ("train_fraction", 1.2), ("train_fraction", -0.5),
])
def test_bad_config_names_field_and_value(field, value):
    with pytest.raises(ConfigError, match=f"{field}={value!r} is invalid"):
        ModAddConfig(**{field: value})


def test_fraction_leaving_an_empty_split_refused():
    with pytest.raises(ConfigError, match=r"train_fraction=0\.01 is invalid: .* 9 pairs"):
        ModAddConfig(p=3, train_fraction=0.01)  # no training example
    with pytest.raises(ConfigError, match=r"train_fraction=0\.99 is invalid"):
        ModAddConfig(p=3, train_fraction=0.99)  # no test example


@pytest.mark.parametrize("seed", [0, 1])
def test_counterfactuals_change_the_answer_or_keep_the_sum(seed):
    task = make_task("modadd", preset="tiny")
    ex = task.generate(seed).train
    p = task.config.p
    change = make_counterfactuals(ex, "raw_sum", kind="change", seed=seed)  # verify()-ed
    preserve = make_counterfactuals(ex, "raw_sum", kind="preserve", seed=seed)
    assert bool(change.valid.all())
    for pairs in (change, preserve):
        old, new = pairs.original.intermediates["operand"], pairs.counterfactual.intermediates["operand"]
        assert bool((old != new).all())  # both operands edited
        assert not pairs.counterfactual.is_noisy.any()
    old_true, new_true = change.original.true_labels, change.counterfactual.true_labels
    assert bool((old_true != new_true).all())  # another answer, not only another raw sum
    kept = preserve.original.intermediates["raw_sum"], preserve.counterfactual.intermediates["raw_sum"]
    assert torch.equal(*kept)
    # only (0, 0) and (p - 1, p - 1) have no other pair with their raw sum
    ops = ex.intermediates["operand"]
    lonely = ((ops == 0).all(1) | (ops == p - 1).all(1))
    assert torch.equal(preserve.valid, ~lonely)


def test_tiny_preset_has_enough_clean_examples_for_every_analysis():
    data = make_task("modadd", preset="tiny").generate(0)
    assert int((~data.train.is_noisy).sum()) >= MIN_CLEAN


def test_analyze_writes_every_analysis_including_fourier(tmp_path):
    out = tmp_path / "modadd"
    cfg = make_run_config("modadd", "tiny", overrides={"train.steps": 40})
    train(cfg, out, device="cpu", progress=False)
    assert main(["analyze", str(out)]) == 0
    names = applicable(load_run(out).task)
    assert "fourier" in names and {"probes", "patching", "neurons", "circuits"} <= set(names)
    for name in names:
        data = load_analysis(out, name)
        assert data["analysis"] == name and data["frame"], name
        assert data["seconds"] >= 0
    fourier = load_analysis(out, "fourier")
    assert len(fourier["frame"]) == 128 and fourier["summary"]["mode"] == "grid"
    scored = [row["ipr"] for row in fourier["frame"] if row["ipr"] is not None]  # None: a constant neuron
    assert len(scored) == 128 - fourier["summary"]["n_constant"] > 0
    assert all(1 / 264 - 1e-6 <= v <= 1 + 1e-6 for v in scored)  # (23**2 - 1) / 2 real frequencies
    pruning = fourier["summary"]["pruning"]
    assert {row["metric"] for row in pruning} == {"train_clean", "train_noisy", "test"}
    assert {row["share"] for row in pruning} == {0.0, 0.05, 0.1, 0.2, 0.3}
