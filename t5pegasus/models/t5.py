"""T5 / mT5 / T5 PEGASUS encoder-decoder as flax.linen modules.

Pre-norm RMSNorm blocks, attention without biases or 1/sqrt(d) scaling, a relative position bias computed
once per stack and shared by its layers, relu or gated feed-forward. The T5 PEGASUS switches
(`cross_attention_bias`, `scale_logits`, erf GELU) are config fields; with them off the model is HF mT5/T5.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from t5pegasus.attention import causal_mask, combine, key_padding_mask, padding_mask, segment_mask
from t5pegasus.families.t5 import T5Config
from t5pegasus.models.layers import (
    Dense,
    Embed,
    GatedMLP,
    MultiHeadAttention,
    RelativePositionBias,
    RMSNorm,
    constrain,
    dtype_of,
    initial_scores,
    join_carry,
    run_layers,
    split_carry,
)

EDGE = ("batch", "length", "embed")


def _activation(cfg: T5Config) -> str:
    return {"relu": "relu", "gated-relu": "relu", "gated-gelu": "gelu", "gated-gelu-erf": "gelu-erf",
            "gated-silu": "silu"}[cfg.feed_forward]


def _attention(cfg: T5Config, name: str) -> MultiHeadAttention:
    f = cfg.initializer_factor
    return MultiHeadAttention(
        num_heads=cfg.num_heads, head_dim=cfg.d_kv, scale=1.0, dropout_rate=cfg.dropout_rate,
        q_stddev=f * (cfg.d_model * cfg.d_kv) ** -0.5, kv_stddev=f * cfg.d_model**-0.5,
        o_stddev=f * (cfg.num_heads * cfg.d_kv) ** -0.5,
        dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype), name=name,
        options=cfg.attention,
    )


def _attend(module: MultiHeadAttention, x: Array, scores: tuple[Array, ...], index: int,
            **kwargs: Any) -> tuple[Array, tuple[Array, ...]]:
    """Call an attention module; with RealFormer on, feed it `scores[index]` and put its new scores there."""
    if not scores:
        return module(x, **kwargs), scores
    out, new = module(x, prev_scores=scores[index], **kwargs)
    return out, scores[:index] + (new,) + scores[index + 1:]


def _relative_bias(cfg: T5Config, bidirectional: bool) -> RelativePositionBias | None:
    """The stack's shared relative position bias module, or None when positions are rotary."""
    if not cfg.relative_bias:
        return None
    return RelativePositionBias(cfg.relative_buckets, cfg.relative_max_distance, cfg.num_heads, bidirectional,
                                stddev=cfg.initializer_factor * cfg.d_model**-0.5,
                                param_dtype=dtype_of(cfg.param_dtype), name="relpos_bias")


def _mlp(cfg: T5Config) -> GatedMLP:
    f = cfg.initializer_factor
    return GatedMLP(d_ff=cfg.d_ff, activation=_activation(cfg), gated=cfg.gated, dropout_rate=cfg.dropout_rate,
                    stddev_in=f * cfg.d_model**-0.5, stddev_out=f * cfg.d_ff**-0.5,
                    dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype), name="mlp")


def _norm(cfg: T5Config, name: str) -> RMSNorm:
    return RMSNorm(cfg.layer_norm_epsilon, dtype_of(cfg.dtype), dtype_of(cfg.param_dtype), name=name)


class EncoderLayer(nn.Module):
    """Self-attention block then feed-forward block, each pre-normed with a residual."""

    cfg: T5Config
    deterministic: bool = True
    scanned: bool = False

    @nn.compact
    def __call__(self, carry: Any, bias: Array | None, mask: Array | None, positions: Array) -> Any:
        cfg, det = self.cfg, self.deterministic
        x, scores = split_carry(carry)
        drop = nn.Dropout(cfg.dropout_rate)
        h, scores = _attend(_attention(cfg, "attention"), _norm(cfg, "attention_norm")(x), scores, 0, bias=bias,
                            mask=mask, deterministic=det, positions=positions)
        x = constrain(x + drop(h, deterministic=det), EDGE)
        h = _mlp(cfg)(_norm(cfg, "mlp_norm")(x), deterministic=det)
        x = constrain(x + drop(h, deterministic=det), EDGE)
        carry = join_carry(x, scores)
        return (carry, None) if self.scanned else carry


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the encoder output, feed-forward; pre-norm residuals."""

    cfg: T5Config
    deterministic: bool = True
    decode: bool = False
    scanned: bool = False

    @nn.compact
    def __call__(self, carry: Any, encoded: Array, self_bias: Array | None, self_mask: Array | None,
                 cross_bias: Array | None, cross_mask: Array | None, positions: Array) -> Any:
        cfg, det = self.cfg, self.deterministic
        x, scores = split_carry(carry)  # RealFormer: (self-attention scores, cross-attention scores)
        drop = nn.Dropout(cfg.dropout_rate)
        h, scores = _attend(_attention(cfg, "self_attention"), _norm(cfg, "self_attention_norm")(x), scores, 0,
                            bias=self_bias, mask=self_mask, deterministic=det, decode=self.decode,
                            positions=positions, causal=True)
        x = constrain(x + drop(h, deterministic=det), EDGE)
        h, scores = _attend(_attention(cfg, "cross_attention"), _norm(cfg, "cross_attention_norm")(x), scores, 1,
                            memory=encoded, bias=cross_bias, mask=cross_mask, deterministic=det, decode=self.decode)
        x = constrain(x + drop(h, deterministic=det), EDGE)
        h = _mlp(cfg)(_norm(cfg, "mlp_norm")(x), deterministic=det)
        x = constrain(x + drop(h, deterministic=det), EDGE)
        carry = join_carry(x, scores)
        return (carry, None) if self.scanned else carry


class Encoder(nn.Module):
    """Embedded tokens -> contextual states [batch, length, d_model].

    Packed rows (`segment_ids` 1, 2, ... per example, 0 = padding; `positions` from 0 per example): a token
    attends only within its example. The shared relative bias stays the row's: a packed example occupies
    consecutive slots, so key - query distances inside it are its own.
    """

    cfg: T5Config
    shared: Embed

    @nn.compact
    def __call__(self, ids: Array, mask: Array, deterministic: bool = True, segment_ids: Array | None = None,
                 positions: Array | None = None) -> Array:
        cfg = self.cfg
        x = nn.Dropout(cfg.dropout_rate)(self.shared(ids), deterministic=deterministic)
        x = constrain(x, EDGE)
        n = ids.shape[1]
        relpos = _relative_bias(cfg, bidirectional=True)
        bias = None if relpos is None else relpos(n, n)
        attn_mask = padding_mask(mask, mask) if segment_ids is None else segment_mask(segment_ids, segment_ids)
        positions = jnp.arange(n)[None, :] if positions is None else positions
        scores = initial_scores(cfg, ids.shape[0], n, n)
        x = run_layers(self, EncoderLayer, cfg.num_encoder_layers, x, (bias, attn_mask, positions),
                       scores, deterministic=deterministic)
        x = _norm(cfg, "final_norm")(x)
        return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
    """Decoder stack and LM head: target ids + encoder states -> logits [batch, length, vocab] (float32).

    `packing` (training on packed rows): (decoder segment ids, decoder positions, encoder segment ids, encoder
    positions). Self-attention is then causal within the token's example, cross-attention sees that example's
    encoder tokens, and the cross-attention bias (T5 PEGASUS) measures each example's own positions.
    """

    cfg: T5Config
    shared: Embed

    @nn.compact
    def __call__(self, ids: Array, encoded: Array, encoder_mask: Array, decoder_mask: Array | None = None,
                 deterministic: bool = True, decode: bool = False,
                 packing: tuple[Array, Array, Array, Array] | None = None) -> Array:
        cfg = self.cfg
        q_len, k_len = ids.shape[1], ids.shape[1]
        offset: Array | int = 0
        if decode:
            initialised = self.has_variable("cache", "position")
            position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
            if initialised:
                offset = position.value
                k_len = self.get_variable("cache", "key_slots").shape[0]
                position.value = position.value + q_len
            else:  # cache initialisation: the dummy input's length is the cache length
                self.variable("cache", "key_slots", lambda: jnp.zeros((q_len,), jnp.bool_))
        x = nn.Dropout(cfg.dropout_rate)(self.shared(ids), deterministic=deterministic)
        x = constrain(x, EDGE)
        relpos = _relative_bias(cfg, bidirectional=False)
        self_bias = None if relpos is None else relpos(q_len, k_len, offset)
        # Training: causality is the self-attention's `causal` flag (a fused kernel's is_causal); cached decoding
        # places the queries at the cache offset, so its mask says it.
        self_mask = causal_mask(q_len, k_len, offset) if decode else None
        if decoder_mask is not None and not decode:
            self_mask = combine(self_mask, key_padding_mask(decoder_mask, q_len))
        cross_bias = None
        positions = offset + jnp.arange(q_len)[None, :]
        if packing is None:
            cross_mask = key_padding_mask(encoder_mask, q_len)
            if cfg.cross_attention_bias and relpos is not None:
                cross_bias = relpos(q_len, encoded.shape[1], offset)
        else:
            segments, positions, encoder_segments, encoder_positions = packing
            self_mask = combine(self_mask, segment_mask(segments, segments))
            cross_mask = segment_mask(segments, encoder_segments)
            if cfg.cross_attention_bias and relpos is not None:
                cross_bias = relpos(q_len, encoded.shape[1], q_positions=positions, k_positions=encoder_positions)
        scores = initial_scores(cfg, ids.shape[0], q_len, k_len, encoded.shape[1])
        x = run_layers(self, DecoderLayer, cfg.num_decoder_layers, x,
                       (encoded, self_bias, self_mask, cross_bias, cross_mask, positions), scores,
                       deterministic=deterministic, decode=decode)
        x = _norm(cfg, "final_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        if cfg.logits_scaled:
            x = x * (cfg.d_model**-0.5)
        if cfg.tie_word_embeddings:
            logits = self.shared.attend(x)
        else:
            # With the T5 PEGASUS logit scale the head starts d_model**0.5 larger, so a fresh model's logits
            # start at the scale of an unscaled one (otherwise the head must grow ~d_model**0.5-fold first).
            std = cfg.initializer_factor * (1.0 if cfg.logits_scaled else cfg.d_model**-0.5)
            logits = Dense((cfg.vocab_size,), ("embed", "vocab"), std,
                           dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype), name="lm_head")(x)
        return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))


class T5(nn.Module):
    """Encoder-decoder: `__call__(encoder_ids, decoder_ids)` -> logits [batch, dec_len, vocab].

    Masks default to `ids != pad_token_id` for the encoder and to causal-only for the decoder (as HF does when
    no decoder mask is given). `encode` and `decode` expose the halves; `decode(..., decode=True)` runs one
    incremental step against the "cache" collection (see `init_cache`).
    """

    cfg: T5Config

    def setup(self) -> None:
        cfg = self.cfg
        self.shared = Embed(cfg.vocab_size, cfg.d_model, stddev=cfg.initializer_factor,
                            dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        self.encoder = Encoder(cfg, self.shared)
        self.decoder = Decoder(cfg, self.shared)

    def encoder_mask(self, encoder_ids: Array) -> Array:
        return encoder_ids != self.cfg.pad_token_id

    def encode(self, encoder_ids: Array, encoder_mask: Array | None = None, deterministic: bool = True,
               segment_ids: Array | None = None, positions: Array | None = None) -> Array:
        """Encoder states [batch, src_len, d_model] (dtype of the compute); packed rows with `segment_ids`."""
        if encoder_mask is None:
            encoder_mask = self.encoder_mask(encoder_ids)
        return self.encoder(encoder_ids, encoder_mask, deterministic=deterministic, segment_ids=segment_ids,
                            positions=positions)

    def decode(self, encoded: Array, encoder_mask: Array, decoder_ids: Array, decoder_mask: Array | None = None,
               deterministic: bool = True, decode: bool = False,
               packing: tuple[Array, Array, Array, Array] | None = None) -> Array:
        """Logits for `decoder_ids` given encoder states; with `decode=True`, one cached step."""
        return self.decoder(decoder_ids, encoded, encoder_mask, decoder_mask, deterministic=deterministic,
                            decode=decode, packing=packing)

    def __call__(self, encoder_ids: Array, decoder_ids: Array, encoder_mask: Array | None = None,
                 decoder_mask: Array | None = None, deterministic: bool = True, *,
                 encoder_segment_ids: Array | None = None, encoder_positions: Array | None = None,
                 decoder_segment_ids: Array | None = None, decoder_positions: Array | None = None) -> Array:
        """Packed rows (training): all four `*_segment_ids` / `*_positions` given (segment ids 1, 2, ... per
        example, 0 = padding; positions from 0 per example); no attention crosses an example."""
        if encoder_mask is None:
            encoder_mask = self.encoder_mask(encoder_ids)
        encoded = self.encode(encoder_ids, encoder_mask, deterministic=deterministic,
                              segment_ids=encoder_segment_ids, positions=encoder_positions)
        packing = None
        if encoder_segment_ids is not None:
            packing = (decoder_segment_ids, decoder_positions, encoder_segment_ids, encoder_positions)
        return self.decode(encoded, encoder_mask, decoder_ids, decoder_mask, deterministic=deterministic,
                           packing=packing)


def init_cache(model: T5, params: Any, encoded: Array, encoder_mask: Array, max_length: int,
               copies: int = 1) -> Any:
    """An empty KV cache for `max_length` decoder positions of `copies` rows per example (beams, samples:
    example-major), with the cross-attention memory projected once per example. Decode steps then take ids of
    batch * copies rows with the same (unrepeated) `encoded` and `encoder_mask`."""
    dummy = jnp.zeros((encoded.shape[0] * copies, max_length), jnp.int32)
    _, variables = model.apply({"params": params}, encoded, encoder_mask, dummy, decode=True, method=T5.decode,
                               mutable=["cache"])
    return variables["cache"]


def decode_step(model: T5, params: Any, cache: Any, encoded: Array, encoder_mask: Array,
                decoder_ids: Array) -> tuple[Array, Any]:
    """Logits for the next `decoder_ids` (usually one token each) and the updated cache."""
    logits, variables = model.apply({"params": params, "cache": cache}, encoded, encoder_mask, decoder_ids,
                                    decode=True, method=T5.decode, mutable=["cache"])
    return logits, variables["cache"]
