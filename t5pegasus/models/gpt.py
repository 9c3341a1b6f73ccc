"""GPT-2 / CPM-LM decoder-only language model as flax.linen modules.

Pre-LN blocks (LayerNorm eps 1e-5), learned absolute positions, tanh GELU feed-forward, a final LayerNorm and
an LM head tied to the token embedding. Cached incremental decoding uses the flax "cache" collection, like
the T5 decoder (`init_cache` / `decode_step`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from t5pegasus.attention import key_padding_mask, segment_mask
from t5pegasus.families.gpt import GPTConfig
from t5pegasus.models.bert import cached_attention_mask, check_cached_decoding
from t5pegasus.models.layers import (
    MLP,
    DecodeState,
    Embed,
    LayerNorm,
    MultiHeadAttention,
    check_length,
    constrain,
    dtype_of,
    initial_scores,
    join_carry,
    position_embeddings,
    run_layers,
    split_carry,
)

EDGE = ("batch", "length", "embed")


def _kw(cfg: GPTConfig) -> dict[str, Any]:
    return dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))


class GPTLayer(nn.Module):
    """x + attention(LN(x)), then x + mlp(LN(x)); dropout on each branch."""

    cfg: GPTConfig
    deterministic: bool = True
    decode: bool = False
    scanned: bool = False

    @nn.compact
    def __call__(self, carry: Any, mask: Array, key_valid: Array, positions: Array) -> Any:
        cfg, det = self.cfg, self.deterministic
        x, scores = split_carry(carry)
        drop = nn.Dropout(cfg.dropout_rate)
        std = cfg.initializer_range
        # GPT-2 scales the residual projections by 1/sqrt(2 * layers) at initialisation.
        out_std = std / (2 * cfg.num_layers) ** 0.5
        h = LayerNorm(cfg.layer_norm_epsilon, name="attention_norm", **_kw(cfg))(x)
        h = MultiHeadAttention(cfg.num_heads, cfg.head_dim, use_bias=True, dropout_rate=cfg.dropout_rate,
                               q_stddev=std, kv_stddev=std, o_stddev=out_std, name="attention",
                               options=cfg.attention, **_kw(cfg))(
            h, mask=mask, deterministic=det, decode=self.decode, positions=positions, key_valid=key_valid,
            causal=True, prev_scores=scores[0] if scores else None)
        if scores:
            h, scores = h[0], (h[1],)
        x = constrain(x + drop(h, deterministic=det), EDGE)
        h = LayerNorm(cfg.layer_norm_epsilon, name="mlp_norm", **_kw(cfg))(x)
        h = MLP(cfg.intermediate_size, cfg.hidden_act, std, name="mlp", **_kw(cfg))(h)
        x = constrain(x + drop(h, deterministic=det), EDGE)
        carry = join_carry(x, scores)
        return (carry, None) if self.scanned else carry


class GPT(nn.Module):
    """`__call__(ids, mask=None, positions=None)` -> logits [batch, length, vocab] (float32).

    `mask` marks real tokens (default: all; padding keys are hidden from every query). Positions default
    to 0..n-1, or continue from the cache with `decode=True` (one cached chunk; see `init_cache`).
    Packed rows (training): `segment_ids` (1, 2, ... per example, 0 = padding) keep attention causal within
    each example; pass `positions` restarting at 0 per example.
    """

    cfg: GPTConfig

    @nn.compact
    def __call__(self, ids: Array, mask: Array | None = None, positions: Array | None = None,
                 deterministic: bool = True, decode: bool = False, *, segment_ids: Array | None = None) -> Array:
        cfg, kw, std = self.cfg, _kw(self.cfg), self.cfg.initializer_range
        n = ids.shape[1]
        if segment_ids is not None and mask is None:
            mask = segment_ids > 0
        valid = jnp.ones(ids.shape, bool) if mask is None else mask.astype(bool)
        key_valid = valid
        if segment_ids is not None:
            if decode:
                raise ValueError("packed rows (segment_ids) are for training, not cached decoding")
            offset = 0
            attn_mask = segment_mask(segment_ids, segment_ids)  # and causal: the attention's `causal` flag
        elif decode:
            check_cached_decoding(cfg)
            offset, key_valid, key_count, query_count = DecodeState(name="decode_state")(
                valid, jnp.zeros_like(ids))
            attn_mask = cached_attention_mask("causal", offset, key_valid, key_count, query_count)
        else:
            offset = 0  # causality is the attention's `causal` flag (a fused kernel's is_causal), padding the mask
            attn_mask = None if mask is None else key_padding_mask(valid, n)
        if positions is None:  # from 0 (or the cache's offset: its size was checked when it was made)
            check_length(cfg, ids.shape[1])
            positions = offset + jnp.arange(n)[None, :]
        tokens = Embed(cfg.vocab_size, cfg.hidden_size, stddev=std, name="token_embeddings", **kw)
        x = tokens(ids)
        absolute = position_embeddings(cfg, positions, **kw)
        x = x if absolute is None else x + absolute
        x = constrain(nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic), EDGE)
        scores = initial_scores(cfg, ids.shape[0], n, n if attn_mask is None else attn_mask.shape[-1])
        x = run_layers(self, GPTLayer, cfg.num_layers, x, (attn_mask, key_valid, positions), scores,
                       deterministic=deterministic, decode=decode)
        x = LayerNorm(cfg.layer_norm_epsilon, name="final_norm", **kw)(x)
        return constrain(tokens.attend(x), ("batch", "length", "vocab"))


def init_cache(model: GPT, params: Any, batch_size: int, max_length: int) -> Any:
    """An empty KV cache for `max_length` positions (prompt and generated tokens together)."""
    dummy = jnp.zeros((batch_size, max_length), jnp.int32)
    _, variables = model.apply({"params": params}, dummy, decode=True, mutable=["cache"])
    return variables["cache"]


def decode_step(model: GPT, params: Any, cache: Any, ids: Array, mask: Array | None = None) -> tuple[Array, Any]:
    """Logits for the next chunk of `ids` (a prompt, or one token each) and the updated cache.

    `mask` marks real tokens in the chunk (e.g. a right-padded prompt); masked slots stay hidden afterwards.
    """
    logits, variables = model.apply({"params": params, "cache": cache}, ids, mask, decode=True, mutable=["cache"])
    return logits, variables["cache"]
