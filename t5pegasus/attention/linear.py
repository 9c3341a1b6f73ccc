"""Linear attention (Katharopoulos et al. 2020) and the feature-map core it shares with Performer.

With a positive feature map phi, out_i = phi(q_i) S / (phi(q_i) z), S = sum_j phi(k_j) v_j^T,
z = sum_j phi(k_j). Bidirectional: S and z are sums over all (valid) keys, O(n) time and memory.
Causal: S and z become prefix sums. Materialising them per position costs n * m * d memory, so the causal
form runs a scan over chunks of `chunk_size` positions: inside a chunk a small masked quadratic form, across
chunks a carried (S, z); memory is O(n * (chunk_size + d)) and time O(n * chunk_size * d).
Padded keys (key_valid False) get phi(k) = 0 so they add nothing to S or z.
UniLM seq2seq (`segment_ids`): source keys summed bidirectionally plus, for target queries, the causal scan over
the target keys; exact for the UniLM layout (segment ids non-decreasing over the valid tokens), see
`feature_attention`. Also O(n), and usable against a KV cache (`query_offset`).
"""

from __future__ import annotations

from typing import Any

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


def _bidirectional_parts(phi_q: Array, phi_k: Array, v: Array) -> tuple[Array, Array]:
    """(num [b, n, h, dv], den [b, n, h]) of every query against every key given."""
    kv = jnp.einsum("bshm,bshd->bhmd", phi_k, v)
    z = phi_k.sum(axis=1)  # [b, h, m]
    num = jnp.einsum("bnhm,bhmd->bnhd", phi_q, kv)
    den = jnp.einsum("bnhm,bhm->bnh", phi_q, z)
    return num, den


def _causal_parts(phi_q: Array, phi_k: Array, v: Array, chunk_size: int) -> tuple[Array, Array]:
    """(num [b, n, h, dv], den [b, n, h]) of query i against keys j <= i: a scan over chunks of `chunk_size`
    positions carrying the prefix state (sum phi(k) v^T, sum phi(k))."""
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
        return (state, z), (num, den)

    init = (jnp.zeros((b, h, m, dv), jnp.float32), jnp.zeros((b, h, m), jnp.float32))
    xs = (split(phi_q), split(phi_k), split(v))
    if chunks == 1:  # a sequence within one chunk: no scan to trace and compile
        _, (num, den) = step(init, tuple(x[0] for x in xs))
        num, den = num[None], den[None]
    else:
        _, (num, den) = jax.lax.scan(step, init, xs)
    num = num.swapaxes(0, 1).reshape(b, n + pad, h, dv)[:, :n]
    den = den.swapaxes(0, 1).reshape(b, n + pad, h)[:, :n]
    return num, den


def _unilm(phi_q: Array, phi_k: Array, v: Array, segment_ids: Array, chunk_size: int,
           query_offset: Array | int | None) -> Array:
    """UniLM seq2seq visibility (see `feature_attention`): source keys (cumulative segment count 0) summed for
    every query, target keys through the causal scan for target queries only; num and den added, then divided.
    """
    b, n = phi_q.shape[:2]
    s = phi_k.shape[1]
    target = jnp.cumsum(segment_ids.astype(jnp.int32), axis=1) > 0  # [b, n]: c > 0
    if query_offset is None:
        if s != n:
            raise ValueError(f"UniLM linear attention needs equal q/k lengths (or query_offset), got {n} and {s}")
        source_keys, chunk_k, chunk_v = ~target, phi_k, v
    else:
        # Queries are the tokens at key slots [offset, offset + n): earlier slots (the cache so far: source, or
        # earlier target tokens) are visible to every query; slots from offset + n on are not (not filled yet).
        offset = jnp.asarray(query_offset, jnp.int32)
        key_target = jax.lax.dynamic_update_slice(jnp.zeros((b, s), bool), target, (0, offset))
        source_keys = (jnp.arange(s)[None, :] < offset + n) & ~key_target
        chunk_k = jax.lax.dynamic_slice_in_dim(phi_k, offset, n, axis=1)
        chunk_v = jax.lax.dynamic_slice_in_dim(v, offset, n, axis=1)
    num, den = _bidirectional_parts(phi_q, phi_k * source_keys[:, :, None, None].astype(jnp.float32), v)
    t = target.astype(jnp.float32)[:, :, None]  # [b, n, 1]
    num_t, den_t = _causal_parts(phi_q, chunk_k * t[..., None], chunk_v, chunk_size)
    return _normalise(num + num_t * t[..., None], den + den_t * t)


def feature_attention(
    phi_q: Array,
    phi_k: Array,
    v: Array,
    causal: bool = False,
    key_valid: Array | None = None,
    chunk_size: int = 128,
    *,
    segment_ids: Array | None = None,
    query_offset: Array | int | None = None,
) -> Array:
    """Attention with kernel phi(q).phi(k) given the features: phi_q [b, n, h, m], phi_k [b, s, h, m],
    v [b, s, h, dv], key_valid [b, s]. Causal needs s == n. Returns float32 [b, n, h, dv].

    `segment_ids` [b, n] (0 source, 1 target) applies the UniLM seq2seq mask instead of `causal`: query i sees
    key j iff c[j] <= c[i], c = cumsum(segment_ids). It is computed in O(n) as source keys (c == 0) summed for
    every query plus, for target queries (c > 0), the chunked causal scan over the target keys (c > 0), their
    numerators and denominators added before the division. That equals the mask exactly when no valid token of
    segment 0 comes after a token of segment 1, i.e. segment ids are non-decreasing over the valid tokens
    (`[CLS] source [SEP]` 0, `target [SEP]` 1, then padding of any segment id: how UniLM/SimBERT batches are
    built); padded query rows then match the mask too. Another layout (a source token after a target one) is
    not what this computes.

    `query_offset` (with `segment_ids`; an int or a traced scalar) is for a KV cache: the queries are the
    tokens at key slots [offset, offset + n) of a longer key array (offset + n <= s), `segment_ids` are theirs;
    keys before offset (earlier tokens: the source, or earlier target tokens) are visible to every query, keys
    from offset + n on are not (unfilled slots). Equal to the UniLM mask over the sequence so far, as the
    softmax path's cached mask is (a one-token step sees every valid filled slot and itself).
    """
    phi_q, phi_k, v = (x.astype(jnp.float32) for x in (phi_q, phi_k, v))
    if key_valid is not None:
        phi_k = phi_k * key_valid.astype(jnp.float32)[:, :, None, None]
    if segment_ids is not None:
        if causal:
            raise ValueError("pass either causal=True or segment_ids (the UniLM mask), not both")
        return _unilm(phi_q, phi_k, v, segment_ids, chunk_size, query_offset)
    if query_offset is not None:
        raise ValueError("query_offset needs segment_ids (the UniLM mask over a cache)")
    if not causal:
        return _normalise(*_bidirectional_parts(phi_q, phi_k, v))
    if phi_q.shape[1] != phi_k.shape[1]:
        raise ValueError(f"causal linear attention needs equal q/k lengths, got {phi_q.shape} {phi_k.shape}")
    return _normalise(*_causal_parts(phi_q, phi_k, v, chunk_size))


def linear_attention(q: Array, k: Array, v: Array, *args: Any, **kwargs: Any) -> Array:
    """elu+1 linear attention; q [b, n, h, d], k/v [b, s, h, d] -> [b, n, h, d] in q's dtype: `feature_attention`
    of the elu+1 features, which takes the other arguments (causal, key_valid [b, s], chunk_size, and the
    UniLM seq2seq mask's segment_ids / query_offset)."""
    return feature_attention(elu_feature_map(q), elu_feature_map(k), v, *args, **kwargs).astype(q.dtype)
