import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memlens.tasks import MemlensTokenizer, make_task


@settings(max_examples=50, deadline=None)
@given(words=st.lists(st.sampled_from([str(d) for d in range(10)] + ["+", "="]), max_size=30))
def test_roundtrip(words):
    tok = make_task("fda", preset="tiny").tokenizer
    text = " ".join(words)
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id
    assert tok.decode(ids) == text


def test_save_load_roundtrip(tmp_path):
    tok = make_task("thr", preset="tiny").tokenizer
    tok.save(tmp_path / "tokenizer.json")
    back = MemlensTokenizer.load(tmp_path / "tokenizer.json")
    assert back.vocab == tok.vocab and back.name == tok.name
    assert back.encode("e1 r2 r3") == tok.encode("e1 r2 r3")


def test_unknown_token_named():
    tok = make_task("fda", preset="tiny").tokenizer
    with pytest.raises(KeyError, match="'x'"):
        tok.encode("1 x")


def test_transformer_lens_to_tokens_matches_dataset():
    from memlens.models import ModelConfig, build_model  # HookedTransformer or TransformerBridge

    task = make_task("thr", preset="tiny")
    data = task.generate(0)
    model = build_model(ModelConfig(n_layers=1, d_model=16, n_heads=2), task, seed=0)
    text = task.tokenizer.decode(data.train.tokens[5])
    assert torch.equal(model.to_tokens(text)[0], data.train.tokens[5])
    assert model.to_str_tokens(data.train.tokens[5]) == task.tokenizer.to_str_tokens(data.train.tokens[5])
