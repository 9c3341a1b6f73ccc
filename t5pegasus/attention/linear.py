"""Linear attention (Katharopoulos et al. 2020) and the feature-map core it shares with Performer.

With a positive feature map phi, out_i = phi(q_i) S / (phi(q_i) z), S = sum_j phi(k_j) v_j^T,
z = sum_j phi(k_j). Bidirectional: S and z are sums over all (valid) keys, O(n) time and memory.
Causal: S and z become prefix sums. Materialising them per position costs n * m * d memory, so the causal
form runs a scan over chunks of `chunk_size` positions: inside a chunk a small masked quadratic form, across
chunks a carried (S, z); memory is O(n * (chunk_size + d)) and time O(n * chunk_size * d).
Padded keys (key_valid False) get phi(k) = 0 so they add nothing to S or z.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array


def elu_feature_map(x: Array) -> Array:
    """phi(x) = elu(x) + 1 > 0, computed in float32."""
    return jax.nn.elu(x.astype(jnp.float32)) + 1.0


def _normalise(num: Array, den: Array) -> Array:
    # den > 0 whenever a query sees a valid key; a query that sees none has num = den = 0 and gets 0 (a
    # `where` rather than a floor on den, so the gradient -num/den^2 stays finite there too).
    return num / jnp.where(den > 0, den, 1.0)[..., None]


def _bidirectional(phi_q: Array, phi_k: Array, v: Array) -> Array:
    kv = jnp.einsum("bshm,bshd->bhmd", phi_k, v)
    z = phi_k.sum(axis=1)  # [b, h, m]
    num = jnp.einsum("bnhm,bhmd->bnhd", phi_q, kv)
    den = jnp.einsum("bnhm,bhm->bnh", phi_q, z)
    return _normalise(num, den)


def _causal_chunked(phi_q: Array, phi_k: Array, v: Array, chunk_size: int) -> Array:
    b, n, h, m = phi_q.shape
    dv = v.shape[-1]
    c = min(chunk_size, n)
    pad = -n % c
    if pad:
        widths = ((0, 0), (0, pad), (0, 0), (0, 0))
        phi_q, phi_k, v = (jnp.pad(x, widths) for x in (phi_q, phi_k, v))
    chunks = (n + pad) // c

    def split(x: Array) -> Array:  # [b, n, h, e] -> [chunks, b, c, h, e]
        return x.reshape(b, chunks, c, h, x.shape[-1]).swapaxes(0, 1)

    tril = jnp.tril(jnp.ones((c, c), jnp.float32))

    def step(carry, xs):
        state, z = carry  # [b, h, m, dv], [b, h, m]
        pq, pk, pv = xs
        a = jnp.einsum("bihm,bjhm->bhij", pq, pk) * tril
        num = jnp.einsum("bhij,bjhd->bihd", a, pv) + jnp.einsum("bihm,bhmd->bihd", pq, state)
        den = a.sum(axis=-1).transpose(0, 2, 1) + jnp.einsum("bihm,bhm->bih", pq, z)
        state = state + jnp.einsum("bjhm,bjhd->bhmd", pk, pv)
        z = z + pk.sum(axis=1)
        return (state, z), _normalise(num, den)

    init = (jnp.zeros((b, h, m, dv), jnp.float32), jnp.zeros((b, h, m), jnp.float32))
    xs = (split(phi_q), split(phi_k), split(v))
    if chunks == 1:  # a sequence within one chunk: no scan to trace and compile
        _, out = step(init, tuple(x[0] for x in xs))
        out = out[None]
    else:
        _, out = jax.lax.scan(step, init, xs)
    return out.swapaxes(0, 1).reshape(b, n + pad, h, dv)[:, :n]


def feature_attention(
    phi_q: Array,
    phi_k: Array,
    v: Array,
    causal: bool = False,
    key_valid: Array | None = None,
    chunk_size: int = 128,
) -> Array:
    """Attention with kernel phi(q).phi(k) given the features: phi_q [b, n, h, m], phi_k [b, s, h, m],
    v [b, s, h, dv], key_valid [b, s]. Causal needs s == n. Returns float32 [b, n, h, dv]."""
    phi_q, phi_k, v = (x.astype(jnp.float32) for x in (phi_q, phi_k, v))
    if key_valid is not None:
        phi_k = phi_k * key_valid.astype(jnp.float32)[:, :, None, None]
    if not causal:
        return _bidirectional(phi_q, phi_k, v)
    if phi_q.shape[1] != phi_k.shape[1]:
        raise ValueError(f"causal linear attention needs equal q/k lengths, got {phi_q.shape} {phi_k.shape}")
    return _causal_chunked(phi_q, phi_k, v, chunk_size)


def linear_attention(
    q: Array,
    k: Array,
    v: Array,
    causal: bool = False,
    key_valid: Array | None = None,
    chunk_size: int = 128,
) -> Array:
    """elu+1 linear attention; q [b, n, h, d], k/v [b, s, h, d], key_valid [b, s] -> [b, n, h, d]."""
    out = feature_attention(elu_feature_map(q), elu_feature_map(k), v, causal, key_valid, chunk_size)
    return out.astype(q.dtype)
