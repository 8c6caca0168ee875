"""A word-level tokenizer: one token per digit, symbol, entity or relation.

It is a real ``tokenizers`` WordLevel tokenizer (whitespace split, ``<bos>`` prepended by the
post-processor), so it saves as ``tokenizer.json`` and, wrapped as a Hugging Face fast tokenizer,
lets TransformerLens' ``to_tokens`` / ``to_str_tokens`` and circuitsvis labels work on memlens models.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import Tensor

PAD, BOS, UNK = "<pad>", "<bos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, UNK)


class MemlensTokenizer:
    """Word-level tokenizer over a fixed vocabulary; ``<pad>``, ``<bos>``, ``<unk>`` come first.

    >>> tok = MemlensTokenizer(["0", "1", "+", "="], name="demo")
    >>> tok.encode("1 + 1 =")
    [1, 4, 5, 4, 6]
    >>> tok.decode(tok.encode("1 + 1 ="))
    '1 + 1 ='
    """

    def __init__(self, words: Sequence[str], name: str = "memlens"):
        words = list(words)
        clash = [w for w in words if w in SPECIAL_TOKENS or not w or any(c.isspace() for c in w)]
        if clash or len(set(words)) != len(words):
            raise ValueError(f"vocabulary words must be unique, non-special and spaceless: {clash}")
        self.name = name
        self.vocab: list[str] = list(SPECIAL_TOKENS) + words
        self._ids = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.bos_id, self.unk_id = (self._ids[t] for t in SPECIAL_TOKENS)
        self.backend = self._build_backend()
        self._hf = None

    def _build_backend(self) -> Tokenizer:
        tok = Tokenizer(models.WordLevel(dict(self._ids), unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, self.bos_id)]
        )
        return tok

    def __len__(self) -> int:
        return len(self.vocab)

    def token_to_id(self, token: str) -> int:
        """The id of one token; an unknown token is an error that names it."""
        try:
            return self._ids[token]
        except KeyError:
            raise KeyError(f"token {token!r} is not in the {self.name} vocabulary") from None

    def id_to_token(self, token_id: int) -> str:
        return self.vocab[int(token_id)]

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Whitespace-separated words to ids, ``<bos>`` first unless ``add_bos=False``."""
        ids = self.backend.encode(text, add_special_tokens=add_bos).ids
        if self.unk_id in ids:
            unknown = [w for w in text.split() if w not in self._ids]
            raise KeyError(f"unknown token(s) {unknown} for the {self.name} vocabulary")
        return ids

    def decode(self, ids: Sequence[int] | Tensor, skip_special: bool = True) -> str:
        """Ids to a space-joined string; special tokens are dropped unless asked for."""
        words = [self.vocab[int(i)] for i in ids]
        if skip_special:
            words = [w for w in words if w not in SPECIAL_TOKENS]
        return " ".join(words)

    def to_str_tokens(self, ids: Sequence[int] | Tensor) -> list[str]:
        return [self.vocab[int(i)] for i in ids]

    def to_hf(self):
        """The Hugging Face fast tokenizer that ``HookedTransformer(cfg, tokenizer=...)`` takes."""
        if self._hf is None:
            from transformers import PreTrainedTokenizerFast

            # add_bos_token=True and a name_or_path stop TransformerLens from trying to re-load
            # the tokenizer from the Hub (get_tokenizer_with_bos) -- there is no network here.
            self._hf = PreTrainedTokenizerFast(
                tokenizer_object=self.backend,
                bos_token=BOS,
                eos_token=PAD,
                pad_token=PAD,
                unk_token=UNK,
                add_bos_token=True,
                name_or_path=self.name,
            )
        return self._hf

    def to_json(self) -> str:
        """The ``tokenizer.json`` text, with the memlens name kept in the model section."""
        data = json.loads(self.backend.to_str())
        data["memlens_name"] = self.name
        return json.dumps(data, indent=1)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` atomically."""
        from memlens.io import atomic_write_text

        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MemlensTokenizer":
        """Read a ``tokenizer.json`` written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        vocab = data["model"]["vocab"]
        ordered = sorted(vocab, key=vocab.get)
        if tuple(ordered[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"{path} is not a memlens tokenizer (special tokens {ordered[:3]})")
        return cls(ordered[len(SPECIAL_TOKENS):], name=data.get("memlens_name", "memlens"))
