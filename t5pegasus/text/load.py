"""Open a tokenizer from a file path or a spec dict (what dataset metadata records)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from t5pegasus.errors import UserError
from t5pegasus.text.base import Tokenizer

# wordpiece: vocab.txt, jieba then WordPiece (T5 PEGASUS, BERT); sentencepiece: a .model as it is (mT5);
# cpm: a .model behind CPM-LM's jieba cut and U+2582 / U+2583 for space / newline
KINDS = ("wordpiece", "sentencepiece", "cpm")


def kind_for_file(path: str | os.PathLike) -> str:
    """The kind a tokenizer file is when nothing says otherwise: a .model is sentencepiece, else wordpiece."""
    return "sentencepiece" if Path(path).suffix == ".model" else "wordpiece"


def check_kind(kind: str) -> str:
    """`kind`, if it is one of KINDS (else a UserError)."""
    if kind not in KINDS:
        raise UserError(f"unknown tokenizer kind {kind!r}; use {', '.join(KINDS)}")
    return kind


def load_tokenizer(path: str | os.PathLike, *, kind: str = "auto", cpm: bool = False) -> Tokenizer:
    """`vocab.txt` -> BertJiebaTokenizer; `*.model` -> SentencePieceTokenizer (`cpm` for the CPM mapping)."""
    from t5pegasus.text.spm import SentencePieceTokenizer
    from t5pegasus.text.wordpiece import BertJiebaTokenizer

    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer file {path} not found (give a vocab.txt or a sentencepiece .model)")
    kind = check_kind(kind_for_file(path) if kind == "auto" else kind)
    if kind == "wordpiece":
        if path.suffix == ".model":
            raise UserError(f"{path} is a sentencepiece model; tokenizer kind wordpiece needs a vocab.txt")
        return BertJiebaTokenizer(path)
    return SentencePieceTokenizer(path, cpm=cpm or kind == "cpm")


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
