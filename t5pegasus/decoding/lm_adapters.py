"""Decoding adapters for the prompt-prefix families: GPT (causal LM) and UniLM (BERT with the seq2seq mask).

Both take a padded prompt/source in any padding layout, left-align it (so every row's last real token sits in
the last column, which the loop feeds first), prefill all but that token through the KV cache with explicit
positions (0.. per row, padding hidden), then step one token at a time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp
from jax import Array

from t5pegasus.decoding.adapters import CachedDecoding, Start, input_ids, repeat_rows
from t5pegasus.errors import UserError
from t5pegasus.families import BertConfig, GPTConfig


def left_align(ids: Array, mask: Array) -> tuple[Array, Array, Array]:
    """(ids, mask, positions) with each row's real tokens moved, in order, to the right end."""
    order = jnp.argsort(mask.astype(jnp.int32), axis=1, stable=True)  # padding first, then real tokens
    ids, mask = jnp.take_along_axis(ids, order, axis=1), jnp.take_along_axis(mask, order, axis=1)
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    return ids, mask, positions


@dataclasses.dataclass(frozen=True)
class GPTDecoding(CachedDecoding):
    """GPT-2 / CPM-LM: continue `inputs["prompt_ids"]` (`prompt_mask` marks real tokens; default all real,
    since GPT-2's pad id is an ordinary token) until `eos_token_id`. Positions follow the real tokens, so
    padding changes nothing (as HF with left padding and position ids)."""

    cfg: GPTConfig
    input_name: ClassVar[str] = "prompt"  # inputs are `prompt_ids` / `prompt_mask`, continued as a document

    def _apply(self, params: Any, cache: Any, ids: Array, mask: Array | None, positions: Array) -> tuple:
        from t5pegasus.models.gpt import GPT

        logits, variables = GPT(self.cfg).apply({"params": params, "cache": cache}, ids, mask, positions,
                                                decode=True, mutable=["cache"])
        return logits, variables["cache"]

    def start(self, params: Any, inputs: dict[str, Array], copies: int, max_new_tokens: int) -> Start:
        from t5pegasus.models.gpt import GPT, init_cache

        ids, mask = input_ids(inputs, "prompt_ids", "prompt_mask", lambda x: jnp.ones(x.shape, jnp.bool_), "GPT")
        ids, mask, positions = left_align(ids, mask)
        ids, mask, positions = (repeat_rows(x, copies) for x in (ids, mask, positions))
        rows, p = ids.shape
        cache = init_cache(GPT(self.cfg), params, rows, p + max_new_tokens)
        if p > 1:
            _, cache = self._apply(params, cache, ids[:, :-1], mask[:, :-1], positions[:, :-1])
        return Start({"cache": cache, "position": positions[:, -1]}, ids, mask)

    def step(self, params: Any, state: Any, ids: Array) -> tuple[Array, Any]:
        logits, cache = self._apply(params, state["cache"], ids, None, state["position"][:, None])
        return logits[:, -1], {"cache": cache, "position": state["position"] + 1}


LABELS = "condition_labels"  # decoding input: each example's row of a BERT's label embedding, [batch] int


@dataclasses.dataclass(frozen=True)
class UniLMDecoding(CachedDecoding):
    """UniLM (BERT, `mask="unilm"`, with the MLM head): `inputs["source_ids"]` is `[CLS] source [SEP]`
    (segment 0; `source_mask` defaults to ids != pad); the target (segment 1) is generated after it until
    `sep_token_id`, the first token predicted at the source's [SEP], as bert4keras' seq2seq decoding does.
    A causal BERT (`mask="causal"`, bert4keras' application='lm', trained by the `lm` objective) continues the
    same `[CLS] source [SEP]` with segment ids 0 throughout, as it was trained. `inputs["condition_labels"]`
    ([batch] rows of the label embedding, `num_conditions`) conditions every sample: the prefill and every step."""

    cfg: BertConfig

    def __post_init__(self) -> None:
        if self.cfg.mask not in ("unilm", "causal") or not self.cfg.with_mlm:
            raise UserError("BERT decoding needs a BertConfig with mask='unilm' (UniLM) or 'causal' (a BERT LM) "
                            "and with_mlm=True")

    @property
    def eos_token_id(self) -> int:
        return self.cfg.sep_token_id

    def _apply(self, params: Any, cache: Any, ids: Array, segments: Array, mask: Array, positions: Array,
               labels: Array | None) -> tuple:
        from t5pegasus.models.bert import Bert

        out, variables = Bert(self.cfg).apply({"params": params, "cache": cache}, ids, segments, mask,
                                              positions=positions, decode=True, mutable=["cache"], labels=labels)
        return out.logits, variables["cache"]

    def start(self, params: Any, inputs: dict[str, Array], copies: int, max_new_tokens: int) -> Start:
        from t5pegasus.models.bert import Bert, init_cache

        ids, mask = input_ids(inputs, "source_ids", "source_mask", lambda x: x != self.cfg.pad_token_id, "UniLM")
        labels = inputs.get(LABELS)
        if labels is not None and not self.cfg.num_conditions:
            raise UserError("this BERT has no label embedding (num_conditions=0): it takes no condition labels")
        ids, mask, positions = left_align(ids, mask)
        ids, mask, positions = (repeat_rows(x, copies) for x in (ids, mask, positions))
        labels = None if labels is None else repeat_rows(jnp.asarray(labels, jnp.int32).reshape(-1), copies)
        rows, p = ids.shape
        cache = init_cache(Bert(self.cfg), params, rows, p + max_new_tokens)
        if p > 1:
            _, cache = self._apply(params, cache, ids[:, :-1], jnp.zeros_like(ids[:, :-1]), mask[:, :-1],
                                   positions[:, :-1], labels)
        state = {"cache": cache, "position": positions[:, -1], "segment": jnp.zeros((rows,), jnp.int32)}
        if labels is not None:
            state["labels"] = labels  # the same in every copy of an example: `reorder` leaves it
        return Start(state, ids, mask)

    def step(self, params: Any, state: Any, ids: Array) -> tuple[Array, Any]:
        """The first step feeds the source's last token (segment 0); later ones the target (segment 1; 0 in a
        causal BERT)."""
        col = lambda x: x[:, None]
        logits, cache = self._apply(params, state["cache"], ids, col(state["segment"]), jnp.ones(ids.shape, bool),
                                    col(state["position"]), state.get("labels"))
        target = jnp.ones_like(state["segment"]) if self.cfg.mask == "unilm" else state["segment"]
        return logits[:, -1], {**state, "cache": cache, "position": state["position"] + 1, "segment": target}
