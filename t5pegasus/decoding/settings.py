"""Decoding settings: one frozen (hashable) dataclass, so each distinct value compiles its own loop once."""

from __future__ import annotations

import dataclasses
from typing import Any

from t5pegasus.errors import UserError

EARLY_STOPPING = (True, False, "never")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to decode. Lengths count new tokens only (the end token included, the start token / prompt not).

    HF `generate` equivalents: for an encoder-decoder, `max_length=m` is `max_new_tokens=m-1` and
    `min_length=m` is `min_new_tokens=m-1` (HF counts the decoder start token); for a decoder-only model,
    subtract the prompt length instead.

    - `num_beams > 1`: beam search with HF's length penalty (score / new_length**length_penalty) and
      `early_stopping` (True: stop a batch item once `num_beams` hypotheses ended; False: HF's heuristic;
      "never": canonical beam search).
    - `do_sample`: ancestral sampling after `temperature`, `top_k` (0 = off) and `top_p` (1.0 = off); unlike HF,
      the end token is always kept among the candidates, so a sampled sequence can always stop.
    - `repetition_penalty` (HF/CTRL: a seen token's logit is divided by it when positive, multiplied when
      negative) and `no_repeat_ngram_size` (a token completing an n-gram already present is banned) look at the
      whole sequence, prefix included, as HF does.
    """

    max_new_tokens: int = 32
    min_new_tokens: int = 0
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        check = _checker()
        check(self.max_new_tokens >= 1, f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        check(0 <= self.min_new_tokens <= self.max_new_tokens,
              f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], got {self.min_new_tokens}")
        check(self.num_beams >= 1, f"num_beams must be at least 1, got {self.num_beams}")
        check(self.num_return_sequences >= 1, "num_return_sequences must be at least 1")
        if self.num_beams > 1:
            check(not self.do_sample, "beam sampling (do_sample with num_beams > 1) is not supported; "
                  "use num_beams=1 for sampling")
            check(self.num_return_sequences <= self.num_beams,
                  f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams})")
        elif not self.do_sample:
            check(self.num_return_sequences == 1,
                  "greedy decoding returns one sequence; use do_sample=True or num_beams for several")
        check(self.early_stopping in EARLY_STOPPING and isinstance(self.early_stopping, bool | str),
              f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        check(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
        check(self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}")
        check(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}")
        check(self.repetition_penalty > 0, f"repetition_penalty must be positive, got {self.repetition_penalty}")
        check(self.no_repeat_ngram_size >= 0, "no_repeat_ngram_size must be >= 0 (0 = off)")

    @property
    def copies(self) -> int:
        """Rows per input example in the decoding batch (beams, or samples)."""
        return self.num_beams if self.num_beams > 1 else self.num_return_sequences

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _checker():
    def check(condition: bool, message: str) -> None:
        if not condition:
            raise UserError(f"invalid decoding settings: {message}")

    return check
