"""Texts in, generated texts out: tokenize sources, batch them in a few fixed shapes, decode, detokenize.

Shapes are bucketed (rows: the batch size, or fewer for a short input list, rounded up to `row_multiple`;
source length: the next power of two, at most the limit) so a long evaluation compiles the decoding loop once
or twice, not once per batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from t5pegasus import families
from t5pegasus.config import ConfigBase
from t5pegasus.decoding import Settings
from t5pegasus.errors import UserError
from t5pegasus.text.base import Tokenizer

MIN_BUCKET = 8


def decoding_model(cfg: ConfigBase) -> Any:
    """The decoding adapter of a model config, from its family record (T5 seq2seq, GPT continuation, UniLM)."""
    return families.of(cfg).decoding.load()(cfg)


@dataclasses.dataclass(frozen=True)
class VocabLimited:
    """A decoding model whose logits beyond the tokenizer's vocabulary are masked out: trained models round
    their embedding table up (to a multiple of 128), and those extra ids are no text."""

    inner: Any
    vocab_size: int

    @property
    def eos_token_id(self) -> int:
        return self.inner.eos_token_id

    @property
    def input_name(self) -> str:
        return self.inner.input_name

    @property
    def pad_token_id(self) -> int:
        return self.inner.pad_token_id

    def start(self, params: Any, inputs: dict[str, Any], copies: int, max_new_tokens: int) -> Any:
        return self.inner.start(params, inputs, copies, max_new_tokens)

    def step(self, params: Any, state: Any, ids: Any) -> tuple[Any, Any]:
        import jax.numpy as jnp

        logits, state = self.inner.step(params, state, ids)
        keep = jnp.arange(logits.shape[-1]) < self.vocab_size
        return jnp.where(keep, logits, -jnp.inf), state

    def reorder(self, state: Any, index: Any) -> Any:
        return self.inner.reorder(state, index)


def condition_rows(cfg: ConfigBase, labels: Sequence[Any] | None, count: int) -> np.ndarray | None:
    """Rows of the model's label embedding for one condition label per source (None: the model has none, and
    none were given); a label the model cannot take, or a missing one for a model that needs it, is a
    UserError."""
    rows = getattr(cfg, "num_conditions", 0)
    if labels is None or all(x is None for x in labels):
        if rows:
            names = ", ".join(cfg.condition_labels) or f"0..{rows - 1}"  # type: ignore[attr-defined]
            raise UserError(f"this model generates under a condition label ({names}): give one (--condition K, or "
                            "\"label\" in each JSONL input line)")
        return None
    if not rows:
        raise UserError(f"a condition label was given, but this {cfg.family} model has no label embedding "
                        "(num_conditions=0): it takes none")
    if len(labels) != count or any(x is None for x in labels):
        raise UserError("give every input a condition label (or --condition K for all of them)")
    return np.asarray([cfg.condition_index(x) for x in labels], np.int32)  # type: ignore[attr-defined]


def _bucket(n: int, limit: int) -> int:
    size = MIN_BUCKET
    while size < n:
        size *= 2
    return min(size, limit)


class Predictor:
    """Generate for source texts with a model's params and tokenizer (sources truncated to `max_source_len`)."""

    def __init__(self, cfg: ConfigBase, params: Any, tokenizer: Tokenizer, *, max_source_len: int = 512,
                 batch_size: int = 16, row_multiple: int = 1, continuation: bool = False,
                 prompt: str = "") -> None:
        """`continuation` (GPT): the prompt is `[bos] text`, continued as a document (a language model that
        was not fine-tuned on pairs); otherwise sources are wrapped as in fine-tuning (`[CLS] src [SEP]`).
        `prompt` (a language model only: a few-shot prompt) is put before every source text, exactly, and cut
        with it as one text; when the two are longer than the source limit, their start is dropped (the end is
        what is continued)."""
        self.cfg, self.params, self.tok = cfg, params, tokenizer
        self.model = decoding_model(cfg)
        if prompt and self.model.input_name != "prompt":
            raise UserError(f"a prompt (--prompt-file) goes before the text a language model continues (GPT / "
                            f"CPM-LM); a {cfg.family} model generates from a source")
        self.prompt = prompt
        self.continuation = continuation and self.model.input_name == "prompt"
        if tokenizer.vocab_size < cfg.vocab_size:
            self.model = VocabLimited(self.model, tokenizer.vocab_size)
        self.max_source_len = max_source_len
        self.batch_size = max(1, batch_size)
        self.row_multiple = max(1, row_multiple)

    def _source_limit(self, settings: Settings) -> int:
        limit = self.max_source_len
        positions = self.cfg.position_limit  # source and new tokens share one position table (GPT, UniLM)
        if positions is not None:
            limit = min(limit, positions - settings.max_new_tokens)
            if limit < 3:
                raise UserError(f"the model has {positions} positions: no room for a source and "
                                f"{settings.max_new_tokens} new tokens; lower the maximum length")
        return limit

    def _inputs(self, sources: Sequence[str], rows: int, limit: int) -> dict[str, np.ndarray]:
        tok = self.tok
        encoded = tok.encode_batch([self.prompt + s for s in sources])
        if self.prompt:  # keep the end: a few-shot prompt's start can go, the text to continue cannot
            room = limit - (tok.bos_id is not None) - (not self.continuation)  # [bos] ... ([eos])
            encoded = [x[-room:] if len(x) > room else x for x in encoded]
        if self.continuation:
            head = [] if tok.bos_id is None else [tok.bos_id]
            ids = [head + x[: limit - len(head)] for x in encoded]
            ids = [x or [tok.eos_id] for x in ids]
        else:
            ids = [tok.add_special(x, limit) for x in encoded]
        ids += [ids[0]] * (rows - len(ids))  # filler rows, dropped after decoding
        width = _bucket(max(len(x) for x in ids), limit)
        out = np.full((rows, width), tok.pad_id, np.int32)
        mask = np.zeros((rows, width), bool)
        for i, row in enumerate(ids):
            out[i, : len(row)] = row
            mask[i, : len(row)] = True
        key = self.model.input_name
        return {f"{key}_ids": out, f"{key}_mask": mask}

    def batches(self, sources: Sequence[str], settings: Settings, seed: int = 0,
                labels: Sequence[Any] | None = None) -> Iterator[list[list[str]]]:
        """Per batch of sources: for each, its `num_return_sequences` generated texts (best first for beams);
        `labels`: each source's condition label (a model with a label embedding)."""
        import jax

        from t5pegasus.decoding import generate
        from t5pegasus.decoding.lm_adapters import LABELS

        conditions = condition_rows(self.cfg, labels, len(sources))
        limit = self._source_limit(settings)
        rows = min(self.batch_size, len(sources))
        rows = -(-rows // self.row_multiple) * self.row_multiple
        key = jax.random.key(seed)
        for b, start in enumerate(range(0, len(sources), self.batch_size)):
            chunk = sources[start : start + self.batch_size]
            inputs = self._inputs(chunk, rows, limit)
            if conditions is not None:
                part = conditions[start : start + self.batch_size]
                inputs[LABELS] = np.concatenate([part, np.full(rows - len(part), part[0], np.int32)])
            out = generate(self.model, self.params, inputs, settings, seed=jax.random.fold_in(key, b))
            tokens, lengths = jax.device_get((out.tokens, out.lengths))
            yield [[self.tok.decode(tokens[i, j, : lengths[i, j]]) for j in range(tokens.shape[1])]
                   for i in range(len(chunk))]

    def __call__(self, sources: Sequence[str], settings: Settings, seed: int = 0,
                 labels: Sequence[Any] | None = None) -> list[list[str]]:
        """For each source (under its condition label, when given), its generated texts."""
        return [texts for batch in self.batches(sources, settings, seed, labels) for texts in batch]
