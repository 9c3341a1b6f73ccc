"""Open a tokenizer from a file path or a spec dict (what dataset metadata records)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from t5pegasus.errors import UserError
from t5pegasus.text.base import Tokenizer


def load_tokenizer(path: str | os.PathLike, *, kind: str = "auto", cpm: bool = False) -> Tokenizer:
    """`vocab.txt` -> BertJiebaTokenizer; `*.model` -> SentencePieceTokenizer (`cpm` for the CPM mapping)."""
    from t5pegasus.text.spm import SentencePieceTokenizer
    from t5pegasus.text.wordpiece import BertJiebaTokenizer

    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer file {path} not found (give a vocab.txt or a sentencepiece .model)")
    if kind == "auto":
        kind = "sentencepiece" if path.suffix == ".model" else "wordpiece"
    if kind == "wordpiece":
        return BertJiebaTokenizer(path)
    if kind in ("sentencepiece", "cpm"):
        return SentencePieceTokenizer(path, cpm=cpm or kind == "cpm")
    raise UserError(f"unknown tokenizer kind {kind!r}; use wordpiece, sentencepiece or cpm")


def kind_of(tokenizer: Tokenizer) -> str:
    """The kind `load_tokenizer` takes to build `tokenizer` again (wordpiece, sentencepiece or cpm)."""
    from t5pegasus.text.spm import SentencePieceTokenizer
    from t5pegasus.text.wordpiece import BertJiebaTokenizer

    if isinstance(tokenizer, BertJiebaTokenizer):
        return "wordpiece"
    if isinstance(tokenizer, SentencePieceTokenizer):
        return "cpm" if tokenizer.cpm else "sentencepiece"
    raise UserError(f"unknown tokenizer type {type(tokenizer).__name__}")


def tokenizer_spec(path: str | os.PathLike, tokenizer: Tokenizer, kind: str) -> dict[str, Any]:
    """What a dataset records about its tokenizer: file, kind, size and special ids."""
    return {"path": str(Path(path).resolve()), "kind": kind, "vocab_size": tokenizer.vocab_size,
            "special_ids": tokenizer.special_ids}  # fmt: skip
