"""Sentencepiece tokenizer with mT5 ids, and the CPM mode (jieba + U+2582/U+2583 for space/newline).

Subword regularization: `encode(text, sample=True)` uses sentencepiece's own sampling; `sampler()` gives
a `ViterbiSampler` over the same unigram pieces with a numpy Generator (reproducible per seed), which
`encode_sampled(text, rng, alpha)` uses (what `prepare --sample-alpha` tokenises with).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t5pegasus.errors import UserError
from t5pegasus.text.base import Tokenizer
from t5pegasus.text.vocab import cpm_pretokenize

if TYPE_CHECKING:
    import numpy as np


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model as a `Tokenizer`. Special ids come from the model (mT5: pad 0, eos 1, unk 2)."""

    def __init__(self, model: str | os.PathLike | bytes, *, cpm: bool = False) -> None:
        import sentencepiece as spm

        if isinstance(model, bytes):
            proto = model
        else:
            path = Path(model)
            if not path.is_file():
                raise UserError(f"sentencepiece model {path} not found; train one: t5pegasus vocab --spm")
            proto = path.read_bytes()
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(proto)
        except (RuntimeError, OSError) as e:
            raise UserError(f"not a sentencepiece model ({e})") from None
        self.cpm = cpm
        self.unk_id = self.sp.unk_id()
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.unk_id
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else self.pad_id
        self.bos_id = None
        self.mask_id = None
        self.decoder_start_id = self.pad_id
        self._proto = proto
        self._samplers: dict[float, Any] = {}

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def token_to_id(self, token: str) -> int:
        return self.sp.piece_to_id(token)

    def id_to_token(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def _prepare(self, text: str) -> str:
        return cpm_pretokenize(text) if self.cpm else text

    def tokenize(self, text: str) -> list[str]:
        return self.sp.encode(self._prepare(text), out_type=str)

    def encode(self, text: str, *, sample: bool = False, alpha: float = 0.1, nbest: int = -1) -> list[int]:
        """Text -> ids; with `sample`, a sampled segmentation (sentencepiece's subword regularization)."""
        if sample:
            return self.sp.encode(self._prepare(text), enable_sampling=True, alpha=alpha, nbest_size=nbest)
        return self.sp.encode(self._prepare(text))

    def encode_sampled(self, text: str, rng: np.random.Generator, alpha: float) -> list[int]:
        """Ids of a segmentation of `text` sampled with `rng` from the unigram lattice at `alpha` (`sampler`):
        the same rng state gives the same ids, unlike sentencepiece's own sampling (CPM mode included)."""
        if alpha not in self._samplers:
            self._samplers[alpha] = self.sampler(alpha)
        return self._samplers[alpha].encode(self._prepare(text), rng)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode([self._prepare(t) for t in texts])

    def decode(self, ids: Iterable[int]) -> str:
        special = {self.pad_id, self.eos_id, self.sp.bos_id()}
        text = self.sp.decode([int(i) for i in ids if int(i) not in special])
        if self.cpm:
            text = text.replace(" ", "").replace("\u2582", " ").replace("\u2583", "\n")
        return text

    def sampler(self, alpha: float = 1.0):
        """A `ViterbiSampler` over this model's unigram pieces (requires a unigram model)."""
        from t5pegasus.text.sampling import ViterbiSampler

        return ViterbiSampler.from_sentencepiece(self.sp, alpha=alpha)
