import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memlens.config import ConfigError
from memlens.tasks import FDAConfig, FDATask, make_task

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

configs = st.builds(
    lambda ops, digits, order, mode, rate, n: FDAConfig(
        n_operands=ops, n_digits=digits, answer_order=order, noise_mode=mode, noise_rate=rate,
        n_train=min(n, 10 ** (ops * digits) // 2), n_test=min(50, 10 ** (ops * digits) // 4),
    ),
    ops=st.integers(2, 4), digits=st.integers(1, 4), order=st.sampled_from(["msb", "lsb"]),
    mode=st.sampled_from(["random", "digit"]), rate=st.sampled_from([0.0, 0.05, 0.3, 0.9]),
    n=st.integers(1, 400),
)


def _values(task, labels):
    """Answer token ids back to integers, whatever the digit order."""
    digits = labels - task.tokenizer.token_to_id("0")
    if task.config.answer_order == "lsb":
        digits = digits.flip(1)
    powers = 10 ** torch.arange(digits.shape[1] - 1, -1, -1)
    return (digits * powers).sum(1)


@SETTINGS
@given(cfg=configs, seed=st.integers(0, 2**31))
def test_fda_labels_intermediates_and_noise(cfg, seed):
    task = FDATask(cfg)
    data = task.generate(seed)
    train, test = data.train, data.test
    inter = train.intermediates
    # a clean label equals the true sum, and true labels always do
    assert torch.equal(_values(task, train.true_labels), inter["operand"].sum(1))
    clean = ~train.is_noisy
    assert torch.equal(train.labels[clean], train.true_labels[clean])
    # column sums and carries recompute every answer digit and the sum
    col_sum, carry = inter["column_sum"], inter["carry"]
    assert torch.equal(col_sum, torch.stack([
        (inter["operand"] // 10**c % 10).sum(1) for c in range(cfg.n_digits)], 1))
    recomputed = ((col_sum + carry[:, :-1]) % 10 * 10 ** torch.arange(cfg.n_digits)).sum(1)
    recomputed = recomputed + carry[:, -1] * 10**cfg.n_digits
    assert torch.equal(recomputed, inter["sum"])
    assert torch.equal((col_sum + carry[:, :-1]) // 10, carry[:, 1:])
    # noise: exact count, noisy labels differ from true ones, test set clean
    assert int(train.is_noisy.sum()) == int(round(cfg.noise_rate * cfg.n_train))
    noisy = train.is_noisy
    assert (train.labels[noisy] != train.true_labels[noisy]).any(1).all()
    if cfg.noise_mode == "digit":
        assert ((train.labels[noisy] != train.true_labels[noisy]).sum(1) == 1).all()
    assert not test.is_noisy.any()
    # train and test inputs are disjoint
    prompt = slice(0, task.layout.eq_pos + 1)
    train_rows = {tuple(r) for r in train.tokens[:, prompt].tolist()}
    assert not train_rows & {tuple(r) for r in test.tokens[:, prompt].tolist()}
    assert len(train_rows) == cfg.n_train
    # the teacher-forced answer tokens are the trained labels
    assert torch.equal(train.tokens[:, train.answer_token_pos], train.labels)
    if cfg.n_operands > 2:
        assert torch.equal(inter["partial_sum"][:, 0], inter["operand"][:, :2].sum(1))


@SETTINGS
@given(seed=st.integers(0, 2**31))
def test_same_seed_same_hash_other_seed_other_data(seed):
    task = make_task("fda", preset="tiny")
    a, b, c = task.generate(seed), task.generate(seed), task.generate(seed + 1)
    assert a.content_hash == b.content_hash
    assert a.content_hash != c.content_hash


def test_layout_positions_hold_the_digits():
    task = FDATask(FDAConfig(n_operands=3, n_digits=3, n_train=50, n_test=10, answer_order="msb"))
    data = task.generate(0)
    lay, ex = task.layout, data.train
    digit0 = task.tokenizer.token_to_id("0")
    for k in range(3):
        for col in range(3):
            got = ex.tokens[:, lay.operand_digit_pos(k, col)] - digit0
            assert torch.equal(got, ex.intermediates["operand"][:, k] // 10**col % 10)
    for col in range(task.config.answer_width):
        got = ex.tokens[:, lay.answer_token_pos(col)] - digit0
        want = ex.intermediates["answer_digit"][:, col]
        clean = ~ex.is_noisy
        assert torch.equal(got[clean], want[clean])
        assert lay.predicting_pos(col) in ex.answer_pos.tolist()
    assert lay.seq_len == ex.tokens.shape[1]


def test_noise_rate_split_independent_of_data():
    """Changing the noise rate changes which labels are noisy, never the inputs."""
    a = make_task("fda", preset="tiny", noise_rate=0.0).generate(3)
    b = make_task("fda", preset="tiny", noise_rate=0.2).generate(3)
    prompt = slice(0, 7)
    assert torch.equal(a.train.tokens[:, prompt], b.train.tokens[:, prompt])


@pytest.mark.parametrize("field,value,needle", [
    ("noise_rate", 1.5, "noise_rate=1.5"),
    ("noise_rate", -0.1, "noise_rate=-0.1"),
    ("n_digits", 0, "n_digits=0"),
    ("n_operands", 0, "n_operands=0"),
    ("n_train", 0, "n_train=0"),
    ("noise_mode", "flip", "noise_mode='flip'"),
    ("answer_order", "middle", "answer_order='middle'"),
])
def test_bad_config_names_field_and_value(field, value, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        FDAConfig(**{field: value})


def test_more_examples_than_input_space_refused():
    with pytest.raises(ConfigError, match=r"n_train \+ n_test=200 .*at most 100"):
        FDAConfig(n_digits=1, n_train=150, n_test=50)


def test_unknown_preset_refused():
    with pytest.raises(ConfigError, match="preset='huge'"):
        make_task("fda", preset="huge")
    with pytest.raises(ConfigError, match="task='add'"):
        make_task("add")


def test_indexing_gives_examples():
    data = make_task("fda", preset="tiny").generate(0)
    one = data.train[3]
    assert len(one) == 1 and torch.equal(one.tokens[0], data.train.tokens[3])
    mask = data.train[data.train.is_noisy]
    assert len(mask) == int(data.train.is_noisy.sum()) and mask.is_noisy.all()
    picked = data.train[np.array([0, 2])]
    assert torch.equal(picked.labels, data.train.labels[[0, 2]])
    with pytest.raises(IndexError):
        data.train[len(data.train)]
