"""Position encodings against direct float64 implementations of their formulas: RoPE (both layouts),
(Leaky) ReRoPE prefill and cached decoding, the hierarchical table and learned absolute positions. ReRoPE
attention is composed as the models compose it (`MultiHeadAttention._rerope`): `rerope_scores` (prefill) or
`rerope_decode_scores` (one cached step), then `attention_from_scores`; learned positions are the models'
`PositionEmbed` table lookup."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5pegasus.attention import (
    apply_rope,
    attention_from_scores,
    attention_scores,
    causal_mask,
    einsum_attention,
    hierarchical_rows,
    hierarchical_table,
    layout_permutation,
    rerope_decode_scores,
    rerope_relative,
    rerope_scores,
)
from t5pegasus.models.layers import PositionEmbed

B, N, H, D = 2, 24, 2, 8


def rerope_attention(q, k, v, window, leaky=None, *, mask=None, symmetric=False, **positions):
    """Prefill attention with (Leaky) ReRoPE on un-rotated q, k, as the models compute it."""
    scores = rerope_scores(q, k, window, leaky, symmetric=symmetric, **positions)
    return attention_from_scores(scores, v, None, mask, dtype=q.dtype)


def rerope_decode_attention(q, k_cache, v_cache, position, window, leaky=None, *, mask=None, key_positions=None):
    """One cached ReRoPE step (un-rotated cached keys) as the models compute it; mask marks filled slots."""
    scores = rerope_decode_scores(q, k_cache, position, window, leaky, key_positions=key_positions)
    return attention_from_scores(scores, v_cache, None, mask, dtype=q.dtype)


def _qkv(seed=0, n=N):
    keys = jax.random.split(jax.random.key(seed), 3)
    return tuple(jax.random.normal(key, (B, n, H, D)) for key in keys)


def _rotate_np(x, pos, layout, base=10000.0):
    """x [..., d] rotated by angle pos * base^(-2i/d) on pair i, written out pair by pair."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    d = x.shape[-1]
    for i in range(d // 2):
        a, b = (2 * i, 2 * i + 1) if layout == "interleaved" else (i, i + d // 2)
        angle = np.asarray(pos, np.float64) * base ** (-2 * i / d)
        out[..., a] = x[..., a] * np.cos(angle) - x[..., b] * np.sin(angle)
        out[..., b] = x[..., a] * np.sin(angle) + x[..., b] * np.cos(angle)
    return out


def _relative_scores_np(q, k, rel_fn, layout, scale):
    """score(i, j) = <R(r) q_i, k_j> with r = rel_fn(i - j): a RoPE score at relative position r."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    nq, nk = q.shape[1], k.shape[1]
    out = np.empty((q.shape[0], q.shape[2], nq, nk))
    for i in range(nq):
        for j in range(nk):
            rq = _rotate_np(q[:, i], rel_fn(i - j), layout)  # [b, h, d]
            out[:, :, i, j] = np.sum(rq * k[:, j], axis=-1) * scale
    return out


@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_rope_is_rotation_by_the_formula(layout):
    q, _, _ = _qkv()
    positions = np.arange(N) + 3
    out = apply_rope(q, positions, layout)
    expected = _rotate_np(q, positions[None, :, None], layout)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    per_batch = apply_rope(q, np.stack([positions, positions * 2]), layout)  # [b, l] positions
    np.testing.assert_allclose(per_batch[1], _rotate_np(q[1], positions[:, None] * 2, layout), atol=1e-4)


def test_layouts_differ_by_a_fixed_permutation_of_head_dims():
    q, _, _ = _qkv()
    perm = layout_permutation(D)
    inter = apply_rope(q, layout="interleaved")
    half = apply_rope(q[..., perm], layout="half")
    np.testing.assert_allclose(half, inter[..., perm], atol=1e-6)
    assert not np.allclose(apply_rope(q, layout="half"), inter, atol=1e-3)  # the layouts are distinct maps


@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_rope_scores_depend_only_on_relative_position(layout):
    q, k, _ = _qkv()
    pos = np.arange(N)

    def scores(shift):
        return attention_scores(apply_rope(q, pos + shift, layout), apply_rope(k, pos + shift, layout))

    np.testing.assert_allclose(scores(0), scores(37), atol=1e-4)
    expected = _relative_scores_np(q, k, lambda r: r, layout, D**-0.5)
    np.testing.assert_allclose(scores(0), expected, atol=1e-4)


def test_rerope_equals_rope_inside_window_and_clips_outside():
    q, k, _ = _qkv()
    w = 5
    rel = np.arange(N)[:, None] - np.arange(N)[None, :]
    rope = attention_scores(apply_rope(q), apply_rope(k))
    rerope = rerope_scores(q, k, window=w)
    inside = rel < w
    np.testing.assert_allclose(np.asarray(rerope)[..., inside], np.asarray(rope)[..., inside], atol=1e-5)
    assert not np.allclose(np.asarray(rerope)[..., ~inside], np.asarray(rope)[..., ~inside], atol=1e-2)
    expected = _relative_scores_np(q, k, lambda r: min(r, w), "interleaved", D**-0.5)
    np.testing.assert_allclose(rerope, expected, atol=1e-4)


@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_leaky_rerope_follows_its_formula(layout):
    q, k, _ = _qkv(seed=1)
    w, leak = 4, 3.0
    expected = _relative_scores_np(q, k, lambda r: r if r < w else w + (r - w) / leak, layout, 0.5)
    out = rerope_scores(q, k, window=w, leaky=leak, scale=0.5, layout=layout)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_symmetric_rerope_clips_both_sides():
    q, k, _ = _qkv(seed=2)
    w, leak = 4, 2.0

    def f(r):
        g = lambda x: x if x < w else w + (x - w) / leak
        return g(r) if r >= 0 else -g(-r)

    expected = _relative_scores_np(q, k, f, "interleaved", D**-0.5)
    np.testing.assert_allclose(rerope_scores(q, k, w, leak, symmetric=True), expected, atol=1e-4)
    np.testing.assert_allclose(rerope_relative(np.array([-9, -2, 0, 3, 8]), w, leak, True), [-6.5, -2, 0, 3, 6])


@pytest.mark.parametrize("leaky", [None, 4.0])
def test_rerope_cached_decoding_agrees_with_prefill(leaky):
    q, k, v = _qkv(seed=3)
    w = 6
    mask = causal_mask(N)
    prefill = rerope_attention(q, k, v, window=w, leaky=leaky, mask=mask)
    for t in (0, 5, 6, 13, N - 1):
        filled = (jnp.arange(N) <= t)[None, None, None, :]
        # The cache holds un-rotated keys; slots past t hold junk that the mask must hide.
        junk = jnp.where(filled[:, 0, 0, :, None, None], k, 99.0)
        step = rerope_decode_attention(q[:, t : t + 1], junk, v, t, window=w, leaky=leaky, mask=filled)
        np.testing.assert_allclose(step[:, 0], prefill[:, t], atol=1e-5, err_msg=f"t={t}")
    positions = jnp.array([7, 15])  # a different position per batch row
    filled = (jnp.arange(N)[None, :] <= positions[:, None])[:, None, None, :]
    q_t = jnp.stack([q[0, 7], q[1, 15]])[:, None]
    step = rerope_decode_attention(q_t, k, v, positions, window=w, leaky=leaky, mask=filled)
    np.testing.assert_allclose(step[0, 0], prefill[0, 7], atol=1e-5)
    np.testing.assert_allclose(step[1, 0], prefill[1, 15], atol=1e-5)


def test_rerope_with_huge_window_is_plain_rope_attention():
    q, k, v = _qkv(seed=4)
    rope = einsum_attention(apply_rope(q), apply_rope(k), v, is_causal=True)
    np.testing.assert_allclose(rerope_attention(q, k, v, window=N, mask=causal_mask(N)), rope, atol=1e-5)


def test_rerope_chunked_prefill_with_offset_matches_full_prefill():
    q, k, v = _qkv(seed=5)
    full = rerope_attention(q, k, v, window=3, leaky=2.0, mask=causal_mask(N))
    part = rerope_attention(q[:, 10:], k, v, window=3, leaky=2.0, mask=causal_mask(N - 10, N, 10), q_offset=10)
    np.testing.assert_allclose(part, full[:, 10:], atol=1e-5)


def test_rerope_with_explicit_positions_uses_only_their_differences():
    """Per-row query/key positions (left-aligned prompts, cached key positions) shifted by a constant per row
    give the default scores; decoding against stored key positions agrees with prefill."""
    q, k, v = _qkv(seed=6)
    want = rerope_scores(q, k, 5, 3.0, symmetric=True)
    rows = jnp.arange(N)[None, :] + jnp.array([[4], [11]])  # [b, n]: row 0 starts at 4, row 1 at 11
    got = rerope_scores(q, k, 5, 3.0, symmetric=True, q_positions=rows, k_positions=rows)
    np.testing.assert_allclose(got, want, atol=1e-4)
    prefill = rerope_attention(q, k, v, 5, 3.0, mask=causal_mask(N), q_positions=rows, k_positions=rows)
    t = 9
    filled = (jnp.arange(N) <= t)[None, None, None, :]
    step = rerope_decode_attention(q[:, t:t + 1], k, v, rows[:, t], 5, 3.0, mask=filled, key_positions=rows)
    np.testing.assert_allclose(step[:, 0], prefill[:, t], atol=1e-5)


def test_hierarchical_rows_index_the_extended_table():
    p = jax.random.normal(jax.random.key(1), (6, 3))
    positions = jnp.array([[0, 5, 6, 35], [17, 2, 29, 12]])
    np.testing.assert_allclose(hierarchical_rows(p, positions), hierarchical_table(p)[positions], atol=1e-6)
    assert np.isnan(np.asarray(hierarchical_rows(p, jnp.array([36])))).all()  # past n * n


def test_hierarchical_table_is_exact_below_n_and_follows_formula_beyond():
    n, d, a = 7, 5, 0.4
    p = np.random.default_rng(0).normal(size=(n, d))
    table = hierarchical_table(jnp.asarray(p, jnp.float32))
    assert table.shape == (n * n, d)
    np.testing.assert_allclose(table[:n], p, atol=1e-6)
    u = (p - a * p[0]) / (1 - a)
    expected = np.stack([a * u[i // n] + (1 - a) * u[i % n] for i in range(n * n)])
    np.testing.assert_allclose(table, expected, atol=1e-5)
    assert len(np.unique(np.round(np.asarray(table), 5), axis=0)) == n * n  # every position distinct
    np.testing.assert_allclose(hierarchical_table(jnp.asarray(p), length=20), expected[:20], atol=1e-5)
    with pytest.raises(ValueError, match="hierarchical positions"):
        hierarchical_table(jnp.asarray(p), length=n * n + 1)


def test_learned_positions_slice_and_offset():
    table = jnp.arange(30.0).reshape(10, 3)
    embed = PositionEmbed(10, 3)

    def rows(positions):
        return embed.apply({"params": {"embedding": table}}, positions)

    np.testing.assert_array_equal(rows(2 + jnp.arange(4)), table[2:6])  # offset 2 (a cache index)
    x = jnp.ones((2, 3, 3))
    np.testing.assert_array_equal(x + rows(jnp.arange(3)[None]), 1 + table[None, :3].repeat(2, 0))
    assert np.isnan(np.asarray(rows(9 + jnp.arange(2)))[1]).all()  # past the table: NaN, not the last row


def test_position_gradients_are_finite():
    q, k, v = _qkv()
    table = jax.random.normal(jax.random.key(9), (6, 4))

    def loss(q, k, v, table):
        a = rerope_attention(q, k, v, window=4, leaky=2.0, mask=causal_mask(N), symmetric=True)
        b = rerope_decode_attention(q[:, -1:], k, v, N - 1, window=4)
        c = einsum_attention(apply_rope(q, layout="half"), apply_rope(k, layout="half"), v)
        return jnp.sum(a**2) + jnp.sum(b**2) + jnp.sum(c**2) + jnp.sum(hierarchical_table(table) ** 2)

    for g in jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, table):
        assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0
