"""Performer FAVOR+ (Choromanski et al. 2021): softmax attention approximated by positive random features.

exp(q.k) = E_w[phi(q) phi(k)] with phi(x) = exp(W x - |x|^2 / 2) / sqrt(m) and rows of W ~ N(0, I).
Rows are drawn as orthogonal blocks (lower variance) with chi-distributed norms; the draw is a function of
a PRNG key, so a model redraws them by passing a new key. q and k are each pre-scaled by sqrt(scale)
(d^-1/4 by default) so phi(q).phi(k) estimates exp(scale q.k). Stabilised: each query's features are
divided by their row maximum and all keys' by one shared maximum; both factors cancel in the ratio
num / den, so the result is unchanged while exp never overflows. The attention itself is linear.py's.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array

from t5pegasus.attention.linear import feature_attention


def orthogonal_random_features(key: Array, num_features: int, head_dim: int) -> Array:
    """[num_features, head_dim] projection: stacked orthogonal blocks, rows rescaled to Gaussian norms."""
    blocks = math.ceil(num_features / head_dim)
    block_key, norm_key = jax.random.split(key)
    gaussian = jax.random.normal(block_key, (blocks, head_dim, head_dim), jnp.float32)
    q, _ = jnp.linalg.qr(gaussian)  # orthonormal columns per block
    rows = q.transpose(0, 2, 1).reshape(blocks * head_dim, head_dim)[:num_features]
    norms = jnp.linalg.norm(jax.random.normal(norm_key, (num_features, head_dim), jnp.float32), axis=-1)
    return rows * norms[:, None]


def favor_features(x: Array, projection: Array, is_query: bool, key_valid: Array | None = None) -> Array:
    """Positive features [b, n, h, m] of pre-scaled x [b, n, h, d], stabilised as described above."""
    x = x.astype(jnp.float32)
    wx = jnp.einsum("bnhd,md->bnhm", x, projection.astype(jnp.float32))
    logits = wx - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
    if is_query:
        stab = jnp.max(logits, axis=-1, keepdims=True)
    else:
        masked = logits if key_valid is None else jnp.where(key_valid[:, :, None, None], logits, -jnp.inf)
        stab = jnp.max(masked, axis=(1, 3), keepdims=True)
        stab = jnp.where(jnp.isfinite(stab), stab, 0.0)  # a row with no valid key at all
    logits = logits - jax.lax.stop_gradient(stab)
    return jnp.exp(logits) / math.sqrt(projection.shape[0])


def performer_attention(
    q: Array,
    k: Array,
    v: Array,
    projection: Array,
    causal: bool = False,
    key_valid: Array | None = None,
    scale: float | None = None,
    chunk_size: int = 128,
    *,
    segment_ids: Array | None = None,
    query_offset: Array | int | None = None,
) -> Array:
    """FAVOR+ attention; q [b, n, h, d], k/v [b, s, h, d], projection [m, d] from orthogonal_random_features,
    key_valid [b, s]. Returns [b, n, h, d] in q's dtype. `segment_ids` / `query_offset`: the UniLM seq2seq
    mask (see linear.feature_attention); the one shared key stabiliser spans all valid keys, so it cancels
    for every query whatever subset of them it sees."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    root = math.sqrt(scale)
    phi_q = favor_features(q.astype(jnp.float32) * root, projection, True)
    phi_k = favor_features(k.astype(jnp.float32) * root, projection, False, key_valid)
    return feature_attention(phi_q, phi_k, v, causal, key_valid, chunk_size, segment_ids=segment_ids,
                             query_offset=query_offset).astype(q.dtype)
