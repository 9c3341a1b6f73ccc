"""Scaled dot-product attention over [batch, length, heads, head_dim] tensors.

`einsum_attention` is the reference XLA path: scores in float32, additive bias, boolean mask applied with a
dtype-safe finite negative, softmax in float32, result cast back to the input dtype. `dot_product_attention`
runs the same computation on the backend `kernels.resolve_backend` picks (fused kernels on GPU/TPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from t5pegasus.attention import kernels
from t5pegasus.attention.masks import causal_mask, combine, mask_value


def attention_scores(q: Array, k: Array, scale: float | None = None) -> Array:
    """[b, h, q, k] float32 scores q.k (times `scale`, default 1/sqrt(head_dim); pass 1.0 for T5)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    return scores * scale if scale != 1.0 else scores


@jax.custom_jvp
def softmax(x: Array) -> Array:
    """Softmax over the last axis, differentiated as y * (dx - sum(y * dx)).

    jax.nn.softmax does the same only under the `jax_softmax_custom_jvp` flag (off by default); otherwise its
    gradient goes through exp(x - max) / sum by the quotient rule. In a t5-pegasus-small train step on
    XLA:CPU this cut the encoder's softmax-backward fusions from 193 to 127 ms of profiled op time (the step's
    wall time stayed within run-to-run noise on 2 cores)."""
    unnormalized = jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True)))
    return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (dx,) = primals, tangents
    y = softmax(x)
    return y, y * (dx - jnp.sum(y * dx, axis=-1, keepdims=True))


def masked_softmax(scores: Array, bias: Array | None = None, mask: Array | None = None) -> Array:
    """Softmax over the last axis of float32 scores after adding `bias` and masking out `mask == False`."""
    if bias is not None:
        scores = scores + bias.astype(scores.dtype)
    if mask is not None:
        scores = jnp.where(mask, scores, mask_value(scores.dtype))
    return softmax(scores)


def attention_from_scores(
    scores: Array, v: Array, bias: Array | None = None, mask: Array | None = None, dtype=None
) -> Array:
    """softmax(scores + bias, masked) v for [b, h, q, k] scores and v [b, k, h, d]; returns [b, q, h, d]."""
    weights = masked_softmax(scores, bias, mask)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.astype(v.dtype if dtype is None else dtype)


def einsum_attention(q: Array, k: Array, v: Array, bias: Array | None = None, mask: Array | None = None,
                     scale: float | None = None, is_causal: bool = False) -> Array:
    """The reference path (the `einsum` backend, with the fused backends' signature in kernels.py): explicit
    scores, masked float32 softmax, weighted sum of v. Arguments as `dot_product_attention`'s."""
    if is_causal:
        mask = combine(mask, causal_mask(q.shape[1], k.shape[1]))
    return attention_from_scores(attention_scores(q, k, scale), v, bias, mask, dtype=q.dtype)


def memory_layout(k: Array, v: Array) -> tuple[Array, Array]:
    """Keys and values [b, k, h, d] -> [b, h, d, k]: the layout `memory_attention` reads (on XLA:CPU the
    faster one for both of its matmuls, measured with 1 and 4 query rows per example)."""
    return k.transpose(0, 2, 3, 1), v.transpose(0, 2, 3, 1)


def memory_attention(
    q: Array,
    k_mem: Array,
    v_mem: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    scale: float | None = None,
) -> Array:
    """`einsum_attention` against a fixed memory stored in `memory_layout`, shared by `copies` query rows.

    For decoding: the cross-attention memory is projected once, but on the einsum path every step would relay
    the [b, k, h, d] keys and values out again for its batched matmuls (on XLA:CPU a copy of the whole memory
    per layer per token, and beams repeat it). Stored as the matmuls read it, each step just reads it.
    q [b * copies, q, h, d] (rows example-major: example i's copies are rows i*copies ..), k_mem and v_mem
    [b, h, d, k]; bias broadcastable to [b, h, q, k] and mask to [b, 1 or h, q, k], both per example.
    Returns [b * copies, q, h, d] in q's dtype, equal to einsum_attention with the memory repeated per copy.
    """
    b = k_mem.shape[0]
    rows, q_len, h, d = q.shape
    if rows % b:
        raise ValueError(f"{rows} query rows are not a whole number of copies of {b} memory rows")
    scale = d**-0.5 if scale is None else scale
    qc = q.reshape(b, rows // b, q_len, h, d)
    scores = jnp.einsum("bcqhd,bhdk->bhcqk", qc, k_mem, preferred_element_type=jnp.float32)
    if scale != 1.0:
        scores = scores * scale
    # [b, h, q, k] per-example terms broadcast over the copies axis.
    weights = masked_softmax(scores, None if bias is None else jnp.expand_dims(bias, -3),
                             None if mask is None else jnp.expand_dims(mask, -3))
    out = jnp.einsum("bhcqk,bhdk->bcqhd", weights.astype(v_mem.dtype), v_mem, preferred_element_type=jnp.float32)
    return out.reshape(rows, q_len, h, d).astype(q.dtype)


def dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    bias: Array | None = None,
    mask: Array | None = None,
    scale: float | None = None,
    *,
    is_causal: bool = False,
    backend: str = "auto",
) -> Array:
    """softmax(scale * q k^T + bias, masked) v.

    q: [b, q, h, d]; k, v: [b, k, h, d]; bias: broadcastable to [b, h, q, k]; mask: bool, broadcastable
    to [b, h, q, k]; is_causal: also mask key j > query i (fused kernels then skip those blocks).
    backend: "auto" (fastest that can take the call on this platform) or one of kernels.BACKENDS; a
    backend that cannot take the call falls back (see kernels.py). Returns [b, q, h, d] in q's dtype.
    """
    call = kernels.Call(
        platform=jax.default_backend(),
        dtype=q.dtype,
        q_len=q.shape[1],
        k_len=k.shape[1],
        head_dim=q.shape[-1],
        has_bias=bias is not None,
        has_mask=mask is not None,
    )
    name = kernels.resolve_backend(backend, call)
    if name == "einsum":
        return einsum_attention(q, k, v, bias=bias, mask=mask, scale=scale, is_causal=is_causal)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.size > 1 and name in kernels.PER_SHARD:  # Pallas kernels have no partitioning rule
        return kernels.per_shard(kernels.FUSED[name], mesh, q, k, v, bias, mask, scale=scale, is_causal=is_causal)
    return kernels.FUSED[name](q, k, v, bias=bias, mask=mask, scale=scale, is_causal=is_causal)
