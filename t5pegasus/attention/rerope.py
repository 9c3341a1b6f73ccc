"""ReRoPE and Leaky ReRoPE: RoPE with the relative position clipped (or compressed) beyond a window.

With rel = i - j (query minus key position) and window w:
- ReRoPE:        r = min(rel, w)
- Leaky ReRoPE:  r = rel inside the window, w + (rel - w) / leaky beyond it (leaky > 1)
- symmetric=True also clips the negative side, r = -f(-rel), for bidirectional (encoder) attention.
Inside the window the scores equal RoPE's exactly. A RoPE score depends only on the relative position, so
the clipped part is one more RoPE score with shifted positions: prefill computes two score matrices (three
when symmetric) and picks per (i, j). Decoding stores un-rotated keys in the cache and rotates each cached
key by its own clipped relative position (`rerope_decode_scores`), which agrees with prefill row by row.
Both give scores; `attention_from_scores(scores, v, bias, mask)` finishes the attention (as the models do).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from t5pegasus.attention.dot_product import attention_scores
from t5pegasus.attention.rope import Layout, apply_rope, rope_angles, rotate


def rerope_relative(rel: Array, window: int, leaky: float | None = None, symmetric: bool = False) -> Array:
    """The (possibly fractional) relative position ReRoPE uses for query-minus-key distance `rel`."""
    rel = jnp.asarray(rel, jnp.float32)

    def clip(r: Array) -> Array:
        far = window if leaky is None else window + (r - window) / leaky
        return jnp.where(r < window, r, far)

    if symmetric:
        return jnp.where(rel >= 0, clip(rel), -clip(-rel))
    return clip(rel)


def rerope_scores(
    q: Array,
    k: Array,
    window: int,
    leaky: float | None = None,
    scale: float | None = None,
    q_offset: Array | int = 0,
    layout: Layout = "interleaved",
    base: float = 10000.0,
    symmetric: bool = False,
    *,
    q_positions: Array | None = None,
    k_positions: Array | None = None,
) -> Array:
    """[b, h, q, k] scores of un-rotated q [b, q, h, d] (at q_offset + i) and k [b, k, h, d] (at j).

    `q_positions` / `k_positions` ([len] or [b, len]) replace those default positions, e.g. per-row positions
    of left-aligned prompts or the stored positions of cached keys; only their differences matter.
    """
    q_pos = jnp.arange(q.shape[1]) + q_offset if q_positions is None else jnp.asarray(q_positions)
    k_pos = jnp.arange(k.shape[1]) if k_positions is None else jnp.asarray(k_positions)
    leak = 0.0 if leaky is None else 1.0 / leaky

    def score(qp: Array, kp: Array) -> Array:
        return attention_scores(apply_rope(q, qp, layout, base), apply_rope(k, kp, layout, base), scale)

    rel = (q_pos[..., :, None] - k_pos[..., None, :]).astype(jnp.float32)  # [q, k] or [b, q, k]
    rel = rel[:, None] if rel.ndim == 3 else rel  # [b, 1, q, k] against [b, h, q, k] scores
    inside = score(q_pos, k_pos)
    # Beyond +w: query at i*leak + w(1-leak), key at j*leak, so the difference is w + (rel - w) * leak.
    scores = jnp.where(rel < window, inside, score(q_pos * leak + window * (1 - leak), k_pos * leak))
    if symmetric:
        before = score(q_pos * leak, k_pos * leak + window * (1 - leak))
        scores = jnp.where(rel <= -window, before, scores)
    return scores


def rerope_decode_scores(
    q: Array,
    k_cache: Array,
    position: Array | int,
    window: int,
    leaky: float | None = None,
    scale: float | None = None,
    layout: Layout = "interleaved",
    base: float = 10000.0,
    symmetric: bool = False,
    *,
    key_positions: Array | None = None,
) -> Array:
    """[b, h, 1, n] scores of one un-rotated query q [b, 1, h, d] at `position` (int or [b]) against
    un-rotated cached keys [b, n, h, d] at 0..n-1, or at `key_positions` ([n] or [b, n]) when the cache
    stores them (slots past `position` must be masked by the caller)."""
    if q.shape[1] != 1:
        raise ValueError(f"rerope decoding takes one query position, got q of shape {q.shape}")
    position = jnp.asarray(position)
    k_pos = jnp.arange(k_cache.shape[1]) if key_positions is None else jnp.asarray(key_positions)
    rel = position.reshape(-1, 1) - k_pos.reshape(-1, k_cache.shape[1])  # [b or 1, n]
    r = rerope_relative(rel, window, leaky, symmetric)
    # <R(a) q, R(b) k> = <q, R(b - a) k>: rotate key j by -r_j and leave the query alone.
    keys = rotate(k_cache, rope_angles(-r, k_cache.shape[-1], base)[:, :, None, :], layout)
    return attention_scores(q, keys, scale)
