"""Boolean attention masks, shaped [batch, 1, q_len, k_len] (True = may attend).

Masks stay boolean until the softmax, where they select a finite large negative suited to the dtype, so no
constant ever overflows in bfloat16/float16.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def padding_mask(query_valid: Array, key_valid: Array) -> Array:
    """[b, 1, q, k]: query i and key j are both real tokens (valid arrays are [b, len] bool/int)."""
    queries = query_valid.astype(bool)[:, None, :, None]
    return jnp.logical_and(queries, key_valid.astype(bool)[:, None, None, :])


def key_padding_mask(key_valid: Array, q_len: int = 1) -> Array:
    """[b, 1, q_len, k]: key j is a real token (queries are not masked)."""
    mask = key_valid.astype(bool)[:, None, None, :]
    return jnp.broadcast_to(mask, (mask.shape[0], 1, q_len, mask.shape[-1]))


def causal_mask(q_len: int, k_len: int | None = None, offset: Array | int = 0) -> Array:
    """[1, 1, q, k]: query i (at absolute position offset + i) may attend to key j iff j <= offset + i."""
    k_len = q_len if k_len is None else k_len
    q_pos = jnp.arange(q_len)[:, None] + offset
    k_pos = jnp.arange(k_len)[None, :]
    return (k_pos <= q_pos)[None, None]


def unilm_mask(segment_ids: Array) -> Array:
    """[b, 1, n, n] UniLM seq2seq mask: with c = cumsum(segment_ids), i may attend to j iff c[j] <= c[i].

    Source tokens (segment 0) see the whole source; target tokens see the source and earlier target tokens.
    """
    c = jnp.cumsum(segment_ids.astype(jnp.int32), axis=-1)
    return (c[:, None, :] <= c[:, :, None])[:, None]


def segment_mask(query_segments: Array, key_segments: Array) -> Array:
    """[b, 1, q, k]: query i and key j belong to the same packed example (segment ids 1, 2, ...; 0 = padding,
    which no query sees)."""
    q = query_segments.astype(jnp.int32)[:, None, :, None]
    k = key_segments.astype(jnp.int32)[:, None, None, :]
    return jnp.logical_and(q == k, k > 0)


def combine(*masks: Array | None) -> Array | None:
    """Logical AND of the masks that are not None (None if all are)."""
    result = None
    for m in masks:
        if m is None:
            continue
        result = m if result is None else jnp.logical_and(result, m)
    return result


def mask_value(dtype: jnp.dtype) -> float:
    """A large negative that is finite in `dtype` and stays finite when a bias is added to it."""
    return float(jnp.finfo(dtype).min) / 2
