"""Nystromformer (Xiong et al. 2021): softmax attention through m landmarks, O(n m) time and memory.

Landmarks are segment means of Q and K (m contiguous segments, sizes differing by at most one, padded keys
left out of the means). out = softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V with pinv by the
Newton-Schulz-type iteration of the paper. When m equals the sequence length the landmarks are the tokens,
the middle matrix is the full attention matrix A, and A pinv(A) A V = A V: exact softmax attention.
There is no causal form (the landmarks mix future positions), so it is for bidirectional attention only.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from t5pegasus.attention.dot_product import masked_softmax


def segment_means(x: Array, num_segments: int, valid: Array | None = None) -> tuple[Array, Array]:
    """(means [b, m, h, d], counts [b, m]) over m contiguous segments of x [b, n, h, d]; position i is in
    segment floor(i m / n); positions with valid False are left out (an empty segment's mean is 0)."""
    n = x.shape[1]
    if not 0 < num_segments <= n:
        raise ValueError(f"num_landmarks must be in 1..{n} for a sequence of {n}, got {num_segments}")
    segment = (jnp.arange(n) * num_segments) // n
    weights = (segment[None, :] == jnp.arange(num_segments)[:, None]).astype(jnp.float32)  # [m, n]
    weights = jnp.broadcast_to(weights, (x.shape[0], num_segments, n))
    if valid is not None:
        weights = weights * valid.astype(jnp.float32)[:, None, :]
    counts = weights.sum(axis=-1)
    sums = jnp.einsum("bmn,bnhd->bmhd", weights, x.astype(jnp.float32))
    return sums / jnp.maximum(counts, 1.0)[:, :, None, None], counts


def newton_schulz_pinv(a: Array, iterations: int = 6) -> Array:
    """Approximate Moore-Penrose pseudo-inverse of square matrices a [..., m, m] (Nystromformer's iteration
    Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4 from Z0 = A^T / (||A||_1 ||A||_inf))."""
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    norm1 = jnp.max(jnp.sum(jnp.abs(a), axis=-2), axis=-1)[..., None, None]
    norm_inf = jnp.max(jnp.sum(jnp.abs(a), axis=-1), axis=-1)[..., None, None]
    z = jnp.swapaxes(a, -1, -2) / (norm1 * norm_inf)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_attention(
    q: Array,
    k: Array,
    v: Array,
    num_landmarks: int,
    key_valid: Array | None = None,
    scale: float | None = None,
    pinv_iterations: int = 6,
    query_valid: Array | None = None,
) -> Array:
    """Nystromformer attention; q [b, n, h, d], k/v [b, s, h, d], key_valid [b, s] -> [b, n, h, d].

    `query_valid` [b, n] leaves padded queries out of the query landmarks too (in self-attention pass the
    key flags), so real tokens' outputs do not depend on what sits in padded positions.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf, kf = q.astype(jnp.float32) * scale, k.astype(jnp.float32)
    q_land, _ = segment_means(qf, num_landmarks, query_valid)
    k_land, k_counts = segment_means(kf, num_landmarks, key_valid)
    land_mask = (k_counts > 0)[:, None, None, :]  # [b, 1, 1, m]: landmarks holding some valid key
    key_mask = None if key_valid is None else key_valid.astype(bool)[:, None, None, :]
    kernel_1 = masked_softmax(jnp.einsum("bnhd,bmhd->bhnm", qf, k_land), mask=land_mask)
    kernel_2 = masked_softmax(jnp.einsum("bmhd,bphd->bhmp", q_land, k_land), mask=land_mask)
    kernel_3 = masked_softmax(jnp.einsum("bmhd,bshd->bhms", q_land, kf), mask=key_mask)
    context = jnp.einsum("bhms,bshd->bhmd", kernel_3, v.astype(jnp.float32))
    middle = newton_schulz_pinv(kernel_2, pinv_iterations)
    out = jnp.einsum("bhnm,bhmp,bhpd->bnhd", kernel_1, middle, context)
    return out.astype(q.dtype)
