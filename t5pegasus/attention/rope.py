"""Rotary position embeddings (RoPE) in both pair layouts.

theta_i = base^(-2i/d). Each pair of head dims is rotated by position * theta_i:
- "interleaved" (bert4keras, RoFormer): pairs are dims (2i, 2i+1);
- "half" (GPT-NeoX, Llama): pairs are dims (i, i + d/2).
The two layouts are the same map up to the fixed permutation `layout_permutation(d)` of head dims. Scores
<rope(q, i), rope(k, j)> depend only on j - i, which is what ReRoPE and cached decoding rely on.
"""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
import numpy as np
from jax import Array

Layout = Literal["interleaved", "half"]


def rope_angles(positions: Array, head_dim: int, base: float = 10000.0) -> Array:
    """[..., head_dim // 2] float32 angles position * theta_i (positions may be fractional)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    theta = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    return jnp.asarray(positions, jnp.float32)[..., None] * theta


def rotate(x: Array, angles: Array, layout: Layout = "interleaved") -> Array:
    """Rotate the pairs of x's last axis by `angles` (broadcastable to x.shape[:-1] + (d/2,))."""
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    xf = x.astype(jnp.float32)
    if layout == "interleaved":
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).reshape(xf.shape)
    elif layout == "half":
        x1, x2 = jnp.split(xf, 2, axis=-1)
        out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    else:
        raise ValueError(f"unknown RoPE layout {layout!r}; choose 'interleaved' or 'half'")
    return out.astype(x.dtype)


def apply_rope(
    x: Array, positions: Array | None = None, layout: Layout = "interleaved", base: float = 10000.0
) -> Array:
    """RoPE on x: [b, l, h, d] at `positions` ([l] or [b, l]; default 0..l-1, e.g. cache_index + arange)."""
    positions = jnp.arange(x.shape[1]) if positions is None else jnp.asarray(positions)
    angles = rope_angles(positions, x.shape[-1], base)  # [l, d/2] or [b, l, d/2]
    return rotate(x, angles[..., None, :], layout)  # broadcast over heads


def layout_permutation(head_dim: int) -> np.ndarray:
    """The head-dim permutation that turns the interleaved layout into the half layout.

    For y = x[..., perm] (interleaved -> half order, perm = [0, 2, 4, ..., 1, 3, 5, ...]),
    apply_rope(y, layout="half") == apply_rope(x, layout="interleaved")[..., perm]. Use it to convert q/k
    projection weights between checkpoints of the two layouts (permute the output columns).
    """
    return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])
