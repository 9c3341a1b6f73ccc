"""Scaled dot-product attention over [batch, length, heads, head_dim] tensors.

`dot_product_attention` is the reference XLA path: scores in float32, additive bias, boolean mask applied
with a dtype-safe finite negative, softmax in float32, result cast back to the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from t5pegasus.attention.masks import mask_value


def attention_scores(q: Array, k: Array, scale: float | None = None) -> Array:
    """[b, h, q, k] float32 scores q.k (times `scale`, default 1/sqrt(head_dim); pass 1.0 for T5)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    return scores * scale if scale != 1.0 else scores


def masked_softmax(scores: Array, bias: Array | None = None, mask: Array | None = None) -> Array:
    """Softmax over the last axis of float32 scores after adding `bias` and masking out `mask == False`."""
    if bias is not None:
        scores = scores + bias.astype(scores.dtype)
    if mask is not None:
        scores = jnp.where(mask, scores, mask_value(scores.dtype))
    return jax.nn.softmax(scores, axis=-1)


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    scale: float | None = None,
) -> Array:
    """softmax(scale * q k^T + bias, masked) v.

    q: [b, q, h, d]; k, v: [b, k, h, d]; bias: broadcastable to [b, h, q, k]; mask: bool, broadcastable
    to [b, h, q, k]. Returns [b, q, h, d] in q's dtype.
    """
    weights = masked_softmax(attention_scores(q, k, scale), bias, mask)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype)
