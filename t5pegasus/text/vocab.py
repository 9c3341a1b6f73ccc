"""Vocabulary building: a T5 PEGASUS WordPiece vocab.txt from a corpus, and sentencepiece model training.

WordPiece (the T5 PEGASUS recipe): the BERT special layout ([PAD]=0, [unused1..99], [UNK]=100, [CLS]=101,
[SEP]=102, [MASK]=103), then every character of the (normalised) corpus by frequency, `##c` continuation
pieces for non-CJK characters (so digits and Latin words still tokenize), then the most frequent jieba words
(two characters or more) until the target size.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from t5pegasus.errors import UserError
from t5pegasus.fileio import write_bytes, write_text
from t5pegasus.text.wordpiece import is_cjk, is_punctuation, lowercase_and_normalize

BERT_HEAD = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_wordpiece_vocab(
    texts: Iterable[str], size: int, *, min_count: int = 1, min_char_count: int = 1
) -> list[str]:
    """Characters plus the most frequent jieba words of `texts`, in the BERT layout, up to `size` tokens."""
    from t5pegasus.text.segment import word_cutter

    cut = word_cutter(hmm=False)
    chars: Counter[str] = Counter()
    words: Counter[str] = Counter()
    for text in texts:
        text = lowercase_and_normalize(text)
        chars.update(text)
        words.update(w for w in cut(text) if len(w) > 1)
    if not chars:
        raise UserError("the corpus for the vocabulary is empty")
    vocab = list(BERT_HEAD)
    seen = set(vocab)

    def add(token: str) -> None:
        if token not in seen and len(vocab) < size:
            seen.add(token)
            vocab.append(token)

    kept = [c for c, n in chars.most_common() if n >= min_char_count and not c.isspace() and c.isprintable()]
    for c in kept:
        add(c)
    for c in kept:
        if not (is_cjk(c) or is_punctuation(c)):
            add("##" + c)
    for w, n in words.most_common():
        if n < min_count or len(vocab) >= size:
            break
        if not any(ch.isspace() for ch in w) and w.isprintable():
            add(w)
    return vocab


def save_vocab(tokens: list[str], path: str | os.PathLike) -> None:
    """Write a vocab.txt atomically (one token a line)."""
    write_text(path, "\n".join(tokens) + "\n")


def cpm_pretokenize(text: str) -> str:
    """CPM pre-tokenization: jieba cut, space -> U+2582, newline -> U+2583, words joined by spaces."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    table = str.maketrans(" \n", "\u2582\u2583")
    return " ".join(w.translate(table) for w in jieba.cut(text))


def train_sentencepiece(
    texts: Iterable[str],
    output: str | os.PathLike,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    cpm: bool = False,
    character_coverage: float = 0.9995,
    max_sentence_length: int = 16384,
    input_sentence_size: int = 0,
    seed_sentencepiece_size: int = 1_000_000,
    num_threads: int = 1,
) -> Path:
    """Train a sentencepiece model with mT5 ids (pad=0, eos=1, unk=2, no bos); write it to `output`.

    In CPM mode the training text goes through `cpm_pretokenize` and U+2582/U+2583 are forced pieces.
    """
    import sentencepiece as spm

    def lines() -> Iterator[str]:
        for text in texts:
            text = cpm_pretokenize(text) if cpm else text
            for line in text.split("\n"):
                if line.strip():
                    yield line

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=lines(),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            max_sentence_length=max_sentence_length,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            seed_sentencepiece_size=seed_sentencepiece_size,
            user_defined_symbols=["\u2582", "\u2583"] if cpm else [],
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise UserError(f"sentencepiece training failed: {e}") from None
    output = Path(output)
    write_bytes(output, model.getvalue())
    return output
