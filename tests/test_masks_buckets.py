"""Attention core: relative buckets against HF and the formula, masks, dtype-safe masking."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from t5pegasus.attention import (
    causal_mask,
    dot_product_attention,
    padding_mask,
    relative_position_bucket,
    unilm_mask,
)
from tests.hf_reference import torch_bucket


def formula_bucket(rel: int, bidirectional: bool, buckets: int, max_distance: int) -> int:
    """TECHNIQUES.md, written directly: n = query - key."""
    n = -rel
    ret = 0
    if bidirectional:
        buckets //= 2
        if n < 0:
            ret += buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = buckets // 2
    if n < max_exact:
        return ret + n
    return ret + min(max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                                     * (buckets - max_exact)), buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("buckets,max_distance", [(32, 128), (8, 20), (16, 64)])
def test_buckets_match_hf_and_formula(bidirectional, buckets, max_distance):
    rel = np.arange(-300, 301)
    ours = np.asarray(relative_position_bucket(jnp.asarray(rel), bidirectional, buckets, max_distance))
    np.testing.assert_array_equal(ours, torch_bucket(rel, bidirectional, buckets, max_distance))
    np.testing.assert_array_equal(ours, [formula_bucket(r, bidirectional, buckets, max_distance) for r in rel])
    assert ours.min() >= 0 and ours.max() < buckets


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=1, max_size=24))
def test_unilm_mask_definition(segments):
    s = np.array(segments)
    got = np.asarray(unilm_mask(jnp.asarray(s)[None]))[0, 0]
    c = np.cumsum(s)
    want = c[None, :] <= c[:, None]
    np.testing.assert_array_equal(got, want)


def test_causal_and_padding():
    np.testing.assert_array_equal(np.asarray(causal_mask(3))[0, 0], np.tril(np.ones((3, 3), bool)))
    # A query at absolute position 2 against 5 cached keys sees keys 0..2.
    np.testing.assert_array_equal(np.asarray(causal_mask(1, 5, offset=2))[0, 0, 0], [1, 1, 1, 0, 0])
    m = np.asarray(padding_mask(jnp.array([[1, 1, 0]]), jnp.array([[1, 0, 1]])))
    assert m.shape == (1, 1, 3, 3) and m[0, 0, 0].tolist() == [True, False, True] and not m[0, 0, 2].any()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_masking_is_finite_in_low_precision(dtype):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 4, 2, 8)), dtype) for _ in range(3))
    bias = jnp.full((1, 2, 4, 4), 3.0, jnp.float32)
    mask = jnp.asarray(np.tril(np.ones((4, 4), bool)))[None, None]
    out = dot_product_attention(q, k, v, bias=bias, mask=mask)
    assert out.dtype == dtype and bool(jnp.isfinite(out.astype(jnp.float32)).all())
    # The first query sees only the first key.
    np.testing.assert_allclose(np.asarray(out[:, 0], np.float32), np.asarray(v[:, 0], np.float32), rtol=1e-2)


def test_attention_matches_numpy_float64():
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(size=(2, 5, 3, 4)) for _ in range(3))
    bias = rng.normal(size=(1, 3, 5, 5))
    mask = rng.random((2, 1, 5, 5)) > 0.3
    mask[..., 0] = True
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0 + bias
    s = np.where(mask, s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    want = np.einsum("bhqk,bkhd->bqhd", w, v)
    got = dot_product_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), bias=jnp.asarray(bias),
                                mask=jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
