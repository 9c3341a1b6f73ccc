"""BERT, UniLM and SimBERT as flax.linen modules.

Post-LN encoder with word + position + segment embeddings, a pooler over [CLS] and an MLM head tied to the
word embeddings. `BertConfig.mask` picks the attention mask: "bidirectional" (BERT), "unilm" (seq2seq mask from
segment ids: source sees source, target sees source and earlier target) or "causal". In the unilm and
causal modes the model also decodes incrementally with a KV cache (`init_cache` / `decode_step`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax.numpy as jnp
from jax import Array

from t5pegasus.attention import causal_mask, combine, key_padding_mask, unilm_mask
from t5pegasus.errors import UserError
from t5pegasus.families.bert import BertConfig
from t5pegasus.models.layers import (
    ACTIVATIONS,
    ConditionalLayerNorm,
    DecodeState,
    Dense,
    Embed,
    LayerNorm,
    MultiHeadAttention,
    PositionEmbed,
    check_length,
    constrain,
    dtype_of,
    initial_scores,
    join_carry,
    position_embeddings,
    run_layers,
    split_carry,
)
from t5pegasus.models.layers import MLP as FeedForward

EDGE = ("batch", "length", "embed")


@flax.struct.dataclass
class BertOutput:
    """hidden [b, n, d] (compute dtype); pooled [b, d] or None; logits [b, n, vocab] float32 or None."""

    hidden: Array
    pooled: Array | None
    logits: Array | None


def attention_mask(kind: str, valid: Array, segment_ids: Array) -> Array:
    """[b, 1, n, n] mask of a whole sequence: padding keys are hidden, plus the causal or UniLM structure."""
    n = valid.shape[1]
    keys = key_padding_mask(valid, n)
    if kind == "unilm":
        return combine(unilm_mask(segment_ids), keys)
    if kind == "causal":
        return combine(causal_mask(n), keys)
    return keys


def cached_attention_mask(kind: str, offset: Array | int, key_valid: Array, key_count: Array,
                          query_count: Array) -> Array:
    """[b, 1, q, max_len] mask of a cached chunk at absolute `offset`, from `DecodeState` bookkeeping.

    UniLM: query i may see slot j iff j holds a real token and count[j] <= count[i] (the cumulative
    segment-id definition, evaluated across chunks). Causal: j holds a real token and j <= offset + i.
    """
    keys = key_valid[:, None, None, :]
    if kind == "unilm":
        return jnp.logical_and(keys, key_count[:, None, None, :] <= query_count[:, None, :, None])
    if kind == "causal":
        return jnp.logical_and(keys, causal_mask(query_count.shape[1], key_valid.shape[1], offset))
    raise UserError("a bidirectional BERT cannot decode incrementally; use mask='unilm' or 'causal'")


def check_cached_decoding(cfg: Any) -> None:
    """Cached decoding exists for softmax attention (any position kind, RealFormer included) and, in a UniLM
    BERT, for linear and performer (each cached chunk attends to the cached keys with the UniLM visibility)."""
    kind = cfg.attention.kind
    if kind == "softmax":
        return
    if kind in ("linear", "performer") and isinstance(cfg, BertConfig) and cfg.mask == "unilm":
        return
    raise UserError(f"cached decoding (decode=True) is implemented for attention.kind='softmax' only, not "
                    f"{kind!r}, in this model (a UniLM BERT, mask='unilm', also decodes with "
                    "'linear' and 'performer'): the causal linear kinds are not wired to the KV cache; decode by "
                    "recomputing the full sequence, or train a softmax model")


def _kw(cfg: BertConfig) -> dict[str, Any]:
    return dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))


def _norm(cfg: BertConfig, name: str, x: Array, condition: Array | None) -> Array:
    if cfg.conditional_layer_norm:
        return ConditionalLayerNorm(cfg.layer_norm_epsilon, name=name, **_kw(cfg))(x, condition)
    return LayerNorm(cfg.layer_norm_epsilon, name=name, **_kw(cfg))(x)


class BertLayer(nn.Module):
    """Self-attention and feed-forward, each followed by dropout, the residual and a LayerNorm (post-LN)."""

    cfg: BertConfig
    deterministic: bool = True
    decode: bool = False
    scanned: bool = False

    @nn.compact
    def __call__(self, carry: Any, mask: Array, key_valid: Array, positions: Array,
                 condition: Array | None, segment_ids: Array | None = None) -> Any:
        """`segment_ids` is given (by `Bert`) only for a UniLM BERT with a linear kind, which takes the UniLM
        mask from them instead of the dense `mask`."""
        cfg, det = self.cfg, self.deterministic
        x, scores = split_carry(carry)
        drop = nn.Dropout(cfg.dropout_rate)
        std = cfg.initializer_range
        h = MultiHeadAttention(cfg.num_heads, cfg.head_dim, use_bias=True, dropout_rate=cfg.dropout_rate,
                               q_stddev=std, kv_stddev=std, o_stddev=std, name="attention",
                               options=cfg.attention, symmetric=cfg.mask != "causal", **_kw(cfg))(
            x, mask=mask, deterministic=det, decode=self.decode, positions=positions, key_valid=key_valid,
            causal=cfg.mask == "causal", segment_ids=segment_ids, prev_scores=scores[0] if scores else None)
        if scores:
            h, scores = h[0], (h[1],)
        x = constrain(_norm(cfg, "attention_norm", x + drop(h, deterministic=det), condition), EDGE)
        h = FeedForward(cfg.intermediate_size, cfg.hidden_act, std, name="mlp", **_kw(cfg))(x)
        x = constrain(_norm(cfg, "mlp_norm", x + drop(h, deterministic=det), condition), EDGE)
        carry = join_carry(x, scores)
        return (carry, None) if self.scanned else carry


class Bert(nn.Module):
    """`__call__(ids, segment_ids, mask, condition)` -> BertOutput(hidden, pooled, logits).

    segment_ids default to zeros and mask to `ids != pad_token_id`; `condition` [b, condition_size] feeds the
    conditional LayerNorms (zeros if omitted), or, in a model with a label embedding (`num_conditions`),
    `labels` [b] (int rows of `condition_embeddings`) gives it (`condition_from_labels`). With `decode=True`
    the call is one cached chunk (see `init_cache`): positions continue from the cache, and in unilm mode the
    chunk's segment ids place it.
    """

    cfg: BertConfig

    @nn.compact
    def __call__(self, ids: Array, segment_ids: Array | None = None, mask: Array | None = None,
                 condition: Array | None = None, positions: Array | None = None, deterministic: bool = True,
                 decode: bool = False, labels: Array | None = None) -> BertOutput:
        cfg, kw, std = self.cfg, _kw(self.cfg), self.cfg.initializer_range
        segment_ids = jnp.zeros_like(ids) if segment_ids is None else segment_ids
        valid = (ids != cfg.pad_token_id) if mask is None else mask.astype(bool)
        if cfg.num_conditions:
            table = self.param("condition_embeddings", nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_out", "normal"), (None, None)),
                (cfg.num_conditions, cfg.condition_size), dtype_of(cfg.param_dtype))
            if labels is not None:
                if condition is not None:
                    raise UserError("give Bert either `labels` (rows of its label embedding) or a `condition` "
                                    "vector, not both")
                condition = condition_from_labels(table, labels)
        elif labels is not None:
            raise UserError("this BERT has no label embedding (num_conditions=0); it takes no `labels`")
        if cfg.conditional_layer_norm and condition is None:
            condition = jnp.zeros((ids.shape[0], cfg.condition_size), jnp.float32)
        key_valid = valid
        if decode:
            check_cached_decoding(cfg)
            offset, key_valid, key_count, query_count = DecodeState(name="decode_state")(valid, segment_ids)
            attn_mask = cached_attention_mask(cfg.mask, offset, key_valid, key_count, query_count)
        else:
            offset, attn_mask = 0, attention_mask(cfg.mask, valid, segment_ids)
        if positions is None:  # from 0 (or the cache's offset: its size was checked when it was made)
            check_length(cfg, ids.shape[1])
            positions = offset + jnp.arange(ids.shape[1])[None, :]
        word = Embed(cfg.vocab_size, cfg.hidden_size, stddev=std, name="word_embeddings", **kw)
        x = word(ids)
        absolute = position_embeddings(cfg, positions, **kw)
        x = x if absolute is None else x + absolute
        x = x + PositionEmbed(cfg.type_vocab_size, cfg.hidden_size, std, name="segment_embeddings", **kw)(segment_ids)
        x = _norm(cfg, "embeddings_norm", x, condition)
        x = constrain(nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic), EDGE)
        scores = initial_scores(cfg, ids.shape[0], ids.shape[1], attn_mask.shape[-1])
        # The linear kinds take no dense mask: a UniLM one builds the seq2seq visibility from the segment ids.
        unilm_segments = segment_ids if cfg.mask == "unilm" and cfg.attention.kind != "softmax" else None
        x = run_layers(self, BertLayer, cfg.num_layers, x,
                       (attn_mask, key_valid, positions, condition, unilm_segments), scores,
                       deterministic=deterministic, decode=decode)
        pooled = None
        if cfg.with_pooler:
            pooled = Dense((cfg.hidden_size,), ("embed", None), std, use_bias=True, name="pooler", **kw)(x[:, 0])
            pooled = jnp.tanh(pooled) if cfg.pooler_activation == "tanh" else pooled
        logits = None
        if cfg.with_mlm:
            h = Dense((cfg.hidden_size,), ("embed", None), std, use_bias=True, name="mlm_transform", **kw)(x)
            h = _norm(cfg, "mlm_norm", ACTIVATIONS[cfg.hidden_act](h), condition)
            bias = self.param("mlm_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                              (cfg.vocab_size,), dtype_of(cfg.param_dtype))
            logits = constrain(word.attend(h) + bias.astype(jnp.float32), ("batch", "length", "vocab"))
        return BertOutput(hidden=x, pooled=pooled, logits=logits)


def condition_from_labels(table: Array, labels: Array) -> Array:
    """[b, condition_size] float32 rows of the label embedding `table` for int `labels` [b] (or [b, 1])."""
    labels = jnp.asarray(labels, jnp.int32).reshape(-1)
    return jnp.take(table.astype(jnp.float32), labels, axis=0)


def init_cache(model: Bert, params: Any, batch_size: int, max_length: int) -> Any:
    """An empty KV cache for `max_length` positions (source and target together)."""
    dummy = jnp.zeros((batch_size, max_length), jnp.int32)
    _, variables = model.apply({"params": params}, dummy, mask=jnp.ones_like(dummy, bool), decode=True,
                               mutable=["cache"])
    return variables["cache"]


def decode_step(model: Bert, params: Any, cache: Any, ids: Array, segment_ids: Array | None = None,
                mask: Array | None = None, condition: Array | None = None,
                labels: Array | None = None) -> tuple[BertOutput, Any]:
    """Run the next chunk of tokens against the cache; returns (outputs for the chunk, updated cache).

    UniLM generation: first the whole source in one call (segment ids 0; its tokens see each other), then
    target tokens one at a time with segment ids 1. `mask` marks real tokens (default: ids != pad); `labels`
    (or `condition`) must be given to every chunk: the conditional LayerNorms of each step read it.
    """
    out, variables = model.apply({"params": params, "cache": cache}, ids, segment_ids, mask, condition,
                                 decode=True, mutable=["cache"], labels=labels)
    return out, variables["cache"]
