"""T5 relative position buckets (mesh-TensorFlow scheme).

relative_position = key_pos - query_pos. Bidirectional: half the buckets for each sign. Causal: only
keys at or before the query count (n = max(query_pos - key_pos, 0)). Small distances get a bucket each; the
rest are spaced logarithmically up to `max_distance`, beyond which everything shares the last bucket.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import Array


def relative_position_bucket(
    relative_position: Array, bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128
) -> Array:
    """Map int relative positions (key - query) to bucket ids in [0, num_buckets)."""
    n = -relative_position.astype(jnp.int32)
    ret = jnp.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        ret = ret + (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # log of 0 is avoided by the clip; those positions take the small branch anyway.
    scaled = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (scaled * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return ret + jnp.where(is_small, n, large)


def relative_positions(q_len: int, k_len: int, q_offset: Array | int = 0) -> Array:
    """[q, k] matrix of key_pos - query_pos, the queries starting at absolute position `q_offset`."""
    q_pos = jnp.arange(q_len)[:, None] + q_offset
    k_pos = jnp.arange(k_len)[None, :]
    return k_pos - q_pos


def relative_positions_of(q_positions: Array, k_positions: Array) -> Array:
    """[b, q, k] matrix of key_pos - query_pos from per-row positions [b, q] and [b, k] (packed rows, where
    each example's positions start at 0)."""
    return k_positions.astype(jnp.int32)[:, None, :] - q_positions.astype(jnp.int32)[:, :, None]
