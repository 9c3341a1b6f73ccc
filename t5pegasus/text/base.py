"""The one tokenizer interface every tokenizer here implements.

The data pipeline and the trainers only see this: ids in, ids out, and the handful of special ids a
seq2seq / LM / UniLM batch needs. Concrete tokenizers: `BertJiebaTokenizer` (T5 PEGASUS WordPiece + jieba)
and `SentencePieceTokenizer` (mT5 ids, optional CPM space/newline mapping).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence


class Tokenizer(ABC):
    """Text <-> int ids. Subclasses set the special ids; `None` means the vocabulary has no such token."""

    pad_id: int
    unk_id: int
    bos_id: int | None  # prepended to a sequence by `add_special` ([CLS]); None for mT5
    eos_id: int  # appended by `add_special` ([SEP] or </s>)
    mask_id: int | None
    decoder_start_id: int  # the first decoder input ([CLS] for T5 PEGASUS, pad for mT5)

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (the embedding table's rows)."""

    @abstractmethod
    def tokenize(self, text: str) -> list[str]:
        """Text -> subword strings (no special tokens)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Text -> ids, without special tokens (see `add_special`)."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; special tokens (pad, bos, eos, mask) are dropped."""

    @abstractmethod
    def token_to_id(self, token: str) -> int:
        """One token string -> its id (unk id when absent)."""

    @abstractmethod
    def id_to_token(self, i: int) -> str:
        """One id -> its token string."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Many texts -> ids; subclasses override when a batched path is faster."""
        return [self.encode(t) for t in texts]

    def add_special(self, ids: list[int], max_len: int | None = None) -> list[int]:
        """Wrap ids as a model sequence (`[CLS] ids [SEP]` or `ids </s>`), body truncated to fit max_len."""
        head = [] if self.bos_id is None else [self.bos_id]
        if max_len is not None:
            ids = ids[: max(0, max_len - len(head) - 1)]
        return head + list(ids) + [self.eos_id]

    @property
    def special_ids(self) -> dict[str, int | None]:
        """The special ids by name, for metadata files and checks."""
        return {
            "pad": self.pad_id,
            "unk": self.unk_id,
            "bos": self.bos_id,
            "eos": self.eos_id,
            "mask": self.mask_id,
            "decoder_start": self.decoder_start_id,
        }
