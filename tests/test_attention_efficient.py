"""Linear, Performer, Nystromformer and RealFormer attention against float64 versions of their formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5pegasus.attention import (
    einsum_attention,
    linear_attention,
    newton_schulz_pinv,
    nystrom_attention,
    orthogonal_random_features,
    performer_attention,
    residual_attention,
    unilm_mask,
)

B, N, H, D = 2, 20, 2, 8


def _qkv(seed=0, n=N, d=D):
    keys = jax.random.split(jax.random.key(seed), 3)
    return tuple(jax.random.normal(key, (B, n, H, d)) for key in keys)


def _valid(n=N, lengths=(N, 13)):
    return jnp.arange(n)[None, :] < jnp.array(lengths)[:, None]


def _elu1(x):
    x = np.asarray(x, np.float64)
    return np.where(x > 0, x + 1, np.exp(x))


def _kernel_attention_np(phi_q, phi_k, v, causal=False, valid=None, segment_ids=None):
    """out_i = sum_j A_ij v_j / sum_j A_ij with A_ij = phi(q_i).phi(k_j), masked: the quadratic form.
    `segment_ids`: masked by t5pegasus.attention.unilm_mask instead (c[j] <= c[i], c = cumsum)."""
    a = np.einsum("bihm,bjhm->bhij", phi_q, phi_k)
    if causal:
        a = a * np.tril(np.ones(a.shape[-2:]))
    if segment_ids is not None:
        a = a * np.asarray(unilm_mask(jnp.asarray(segment_ids)), np.float64)
    if valid is not None:
        a = a * np.asarray(valid, np.float64)[:, None, None, :]
    return np.einsum("bhij,bjhd->bihd", a, np.asarray(v, np.float64)) / a.sum(-1).transpose(0, 2, 1)[..., None]


def _softmax_np(q, k, v, scale, valid=None):
    s = np.einsum("bihd,bjhd->bhij", np.asarray(q, np.float64), np.asarray(k, np.float64)) * scale
    if valid is not None:
        s = np.where(np.asarray(valid)[:, None, None, :], s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhij,bjhd->bihd", w / w.sum(-1, keepdims=True), np.asarray(v, np.float64))


# --- linear attention ---


def test_linear_bidirectional_matches_formula_with_padding():
    q, k, v = _qkv()
    valid = _valid()
    expected = _kernel_attention_np(_elu1(q), _elu1(k), v, valid=valid)
    np.testing.assert_allclose(linear_attention(q, k, v, key_valid=valid), expected, atol=1e-5)
    # The factored form is the formula phi(Q)(phi(K)^T V) / (phi(Q) sum phi(K)) too.
    pq, pk = _elu1(q), _elu1(k) * np.asarray(valid)[:, :, None, None]
    num = np.einsum("bihm,bhmd->bihd", pq, np.einsum("bjhm,bjhd->bhmd", pk, np.asarray(v, np.float64)))
    den = np.einsum("bihm,bhm->bih", pq, pk.sum(1))[..., None]
    np.testing.assert_allclose(expected, num / den, atol=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 6, 8, 128])
def test_causal_linear_equals_masked_quadratic_form(chunk_size):
    q, k, v = _qkv(seed=1)
    valid = _valid(lengths=(N, 11))
    out = linear_attention(q, k, v, causal=True, key_valid=valid, chunk_size=chunk_size)
    expected = _kernel_attention_np(_elu1(q), _elu1(k), v, causal=True, valid=valid)
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("mask", ["causal", "unilm"])
def test_causal_linear_memory_grows_linearly_not_as_n_d_d(mask):
    h, d = 1, 64

    def temp_bytes(n):
        x = jax.ShapeDtypeStruct((1, n, h, d), jnp.float32)
        kw = dict(causal=True) if mask == "causal" else dict(segment_ids=(jnp.arange(n) >= n // 3)[None])
        loss = lambda q, k, v: jnp.sum(linear_attention(q, k, v, chunk_size=128, **kw))
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(1024), temp_bytes(8192)
    per_position_prefix_sums = 8192 * d * d * 4  # what materialising S_i for every i would take
    assert large < 0.25 * per_position_prefix_sums, (large, per_position_prefix_sums)
    assert large < 12 * small, (small, large)  # 8x the length: about 8x the memory


# --- UniLM seq2seq mask for the feature-map kinds ---


def _unilm_layout(seed, n=N):
    """Random UniLM rows: [source (0) | target (1) | padding of any segment id], holes inside both parts (a
    right-padded source, say); the first token is always real, so every row sees a key."""
    rng = np.random.default_rng(seed)
    seg, valid = np.zeros((B, n), np.int32), np.ones((B, n), bool)
    for b in range(B):
        src = int(rng.integers(1, n - 2))
        end = src + int(rng.integers(0, n - src + 1))
        seg[b, src:end] = 1
        seg[b, end:] = rng.integers(0, 2, n - end)
        valid[b, end:] = False
        valid[b, 1:end] &= rng.random(end - 1) > 0.2
    return seg, valid


def _unilm_case(kind, seed, n=N):
    """(attend(q, k, v, **kw), float64 reference on full sequences (rows = queries, all of them), seg, valid)."""
    q, k, v = _qkv(seed=seed, n=n)
    seg, valid = _unilm_layout(seed, n)
    if kind == "linear":
        attend = lambda q, k, v, **kw: linear_attention(q, k, v, key_valid=jnp.asarray(valid[:, :k.shape[1]]), **kw)
        features = _elu1
    else:
        w = orthogonal_random_features(jax.random.key(seed), 24, D)
        attend = lambda q, k, v, **kw: performer_attention(q, k, v, w, key_valid=jnp.asarray(valid[:, :k.shape[1]]),
                                                           **kw)
        features = lambda x: _favor_np(x * D**-0.25, np.asarray(w, np.float64))

    def reference(length):
        return _kernel_attention_np(features(q[:, :length]), features(k[:, :length]), v[:, :length],
                                    valid=valid[:, :length], segment_ids=seg[:, :length])

    return attend, (q, k, v), reference, seg


@pytest.mark.parametrize("kind", ["linear", "performer"])
@pytest.mark.parametrize("chunk_size", [1, 6, 8, 128])
def test_unilm_feature_attention_equals_masked_quadratic_form(kind, chunk_size):
    """Source keys summed for every query + the chunked causal scan over target keys for target queries = the
    UniLM-masked quadratic form phi(q) phi(k)^T normalised row-wise, every row (padded ones too); 20 positions
    in chunks of 6 or 8 leave a ragged last chunk."""
    for seed in range(3):
        attend, (q, k, v), reference, seg = _unilm_case(kind, 10 + seed)
        out = attend(q, k, v, segment_ids=jnp.asarray(seg), chunk_size=chunk_size)
        np.testing.assert_allclose(out, reference(N), atol=1e-4 if kind == "performer" else 1e-5)


@pytest.mark.parametrize("kind", ["linear", "performer"])
def test_unilm_feature_attention_against_a_cache(kind):
    """query_offset: a chunk of queries at slots [p, p + n) of a longer key array (later slots hold junk, as an
    unfilled cache does) equals those rows of the full-sequence form over the first p + n tokens; the offset
    may be traced (the cache index under jit)."""
    attend, (q, k, v), reference, seg = _unilm_case(kind, 20)
    run = jax.jit(lambda o, q, s: attend(q, k, v, segment_ids=s, query_offset=o, chunk_size=4))
    for p, n in [(0, 7), (5, 1), (9, 6), (13, 1), (19, 1)]:
        out = run(p, q[:, p:p + n], jnp.asarray(seg[:, p:p + n]))
        np.testing.assert_allclose(out, reference(p + n)[:, p:p + n], atol=1e-4 if kind == "performer" else 1e-5)


def test_unilm_arguments_are_checked():
    q, k, v = _qkv()
    seg = jnp.zeros((B, N), jnp.int32)
    with pytest.raises(ValueError, match="not both"):
        linear_attention(q, k, v, causal=True, segment_ids=seg)
    with pytest.raises(ValueError, match="needs segment_ids"):
        linear_attention(q, k, v, query_offset=0)
    with pytest.raises(ValueError, match="equal q/k lengths"):
        linear_attention(q[:, :5], k, v, segment_ids=seg[:, :5])


# --- Performer ---


def _favor_np(x, w):
    x = np.asarray(x, np.float64)
    return np.exp(np.einsum("bnhd,md->bnhm", x, w) - 0.5 * (x * x).sum(-1, keepdims=True)) / np.sqrt(len(w))


@pytest.mark.parametrize("causal", [False, True])
def test_performer_matches_unstabilised_formula(causal):
    q, k, v = _qkv(seed=2)
    w = orthogonal_random_features(jax.random.key(0), 24, D)
    valid = _valid()
    out = performer_attention(q, k, v, w, causal=causal, key_valid=valid, chunk_size=8)
    root = D**-0.25
    wn = np.asarray(w, np.float64)
    expected = _kernel_attention_np(_favor_np(q * root, wn), _favor_np(k * root, wn), v, causal, valid)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_performer_ignores_padded_keys_even_when_they_are_huge():
    q, k, v = _qkv(seed=3)
    valid = _valid(lengths=(N, 12))
    k = jnp.where(valid[:, :, None, None], k, 40.0)  # would dominate an unmasked stabiliser and underflow the rest
    w = orthogonal_random_features(jax.random.key(1), 32, D)
    out = performer_attention(q, k, v, w, key_valid=valid)
    short = performer_attention(q[1:, :], k[1:, :12], v[1:, :12], w)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(out[1], short[0], atol=1e-5)


def test_orthogonal_features_are_orthogonal_blocks_and_redrawn_by_key():
    w = np.asarray(orthogonal_random_features(jax.random.key(0), 20, D), np.float64)
    assert w.shape == (20, D)
    for block in (w[:D], w[D : 2 * D]):
        gram = block @ block.T
        np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-4)
    same = orthogonal_random_features(jax.random.key(0), 20, D)
    other = orthogonal_random_features(jax.random.key(1), 20, D)
    np.testing.assert_array_equal(same, w.astype(np.float32))
    assert not np.allclose(other, w, atol=1e-2)


def test_performer_error_falls_as_features_grow():
    n, d, seeds = 32, 16, 8
    sizes = (8, 32, 128, 512)
    attend = jax.jit(performer_attention)
    errors = []
    for m in sizes:
        errs = []
        for seed in range(seeds):
            q, k, v = _qkv(seed=100 + seed, n=n, d=d)
            q, k = q * 0.5, k * 0.5  # moderate logits; FAVOR+ variance grows as exp(|q + k|^2)
            w = orthogonal_random_features(jax.random.key(seed), m, d)
            exact = _softmax_np(q, k, v, d**-0.5)
            approx = np.asarray(attend(q, k, v, w), np.float64)
            errs.append(np.linalg.norm(approx - exact) / np.linalg.norm(exact))
        errors.append(float(np.mean(errs)))
    for prev, cur in zip(errors, errors[1:], strict=False):
        assert cur < prev * 1.05, errors
    assert errors[-1] < errors[0] / 3, errors


# --- Nystromformer ---


def _nystrom_np(q, k, v, m, scale, valid=None):
    """The paper's formula with segment-mean landmarks (padded keys left out, empty landmarks masked)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    n = q.shape[1]
    seg = (np.arange(n) * m) // n
    valid = np.ones(k.shape[:2]) if valid is None else np.asarray(valid, np.float64)
    q = q * scale
    ql = np.stack([q[:, seg == s].mean(1) for s in range(m)], 1)
    counts = np.stack([valid[:, seg == s].sum(1) for s in range(m)], 1)  # [b, m]
    sums = np.stack([(k[:, seg == s] * valid[:, seg == s, None, None]).sum(1) for s in range(m)], 1)
    kl = sums / np.maximum(counts, 1)[:, :, None, None]
    land = (counts > 0)[:, None, None, :]

    def softmax(s, mask):
        e = np.where(mask, np.exp(s - s.max(-1, keepdims=True)), 0.0)
        return e / e.sum(-1, keepdims=True)

    k1 = softmax(np.einsum("bnhd,bmhd->bhnm", q, kl), land)
    k2 = softmax(np.einsum("bmhd,bphd->bhmp", ql, kl), land)
    k3 = softmax(np.einsum("bmhd,bshd->bhms", ql, k), valid[:, None, None, :] > 0)
    return np.einsum("bhnm,bhmp,bhps,bshd->bnhd", k1, np.linalg.pinv(k2), k3, v)


def test_nystrom_is_exact_when_landmarks_equal_length():
    q, k, v = _qkv(seed=4)
    valid = _valid(lengths=(N, 14))
    for key_valid in (None, valid):
        exact = _softmax_np(q, k, v, D**-0.5, key_valid)
        out = nystrom_attention(q, k, v, num_landmarks=N, key_valid=key_valid, pinv_iterations=20)
        np.testing.assert_allclose(out, exact, atol=1e-4)


def test_nystrom_query_valid_makes_padded_queries_irrelevant():
    q, k, v = _qkv(seed=7)
    valid = _valid(lengths=(N, 13))
    junk = jnp.where(valid[:, :, None, None], q, 50.0)
    run = lambda x, qv: np.asarray(nystrom_attention(x, k, v, 5, key_valid=valid, query_valid=qv))
    np.testing.assert_allclose(run(junk, valid)[1, :13], run(q, valid)[1, :13], atol=1e-5)
    assert np.abs(run(junk, None)[1, :13] - run(q, None)[1, :13]).max() > 1e-3  # without it they leak in


def test_nystrom_with_fewer_landmarks_matches_formula():
    q, k, v = _qkv(seed=5)
    valid = _valid(lengths=(N, 15))
    out = nystrom_attention(q, k, v, num_landmarks=6, key_valid=valid, pinv_iterations=25)
    expected = _nystrom_np(q, k, v, 6, D**-0.5, valid)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    # The paper's 6 iterations are far from converged on this small, ill-conditioned example; more converge.
    errors = [
        np.abs(np.asarray(nystrom_attention(q, k, v, 6, key_valid=valid, pinv_iterations=it)) - expected).max()
        for it in (6, 9, 12)
    ]
    assert errors[0] > errors[1] > errors[2], errors


def test_newton_schulz_converges_to_pseudo_inverse():
    a = np.random.default_rng(0).normal(size=(3, 6, 6)) + 4 * np.eye(6)
    np.testing.assert_allclose(newton_schulz_pinv(jnp.asarray(a, jnp.float32), 20), np.linalg.pinv(a), atol=1e-4)
    with pytest.raises(ValueError, match="num_landmarks"):
        nystrom_attention(*_qkv(), num_landmarks=N + 1)


# --- RealFormer ---


def test_residual_scores_thread_through_layers():
    (q1, k1, v1), (q2, k2, v2) = _qkv(seed=6), _qkv(seed=7)
    bias = jax.random.normal(jax.random.key(8), (1, H, N, N))
    mask = _valid()[:, None, None, :]
    out1, s1 = residual_attention(q1, k1, v1, None, bias, mask)
    out2, s2 = residual_attention(q2, k2, v2, s1, bias, mask)
    np.testing.assert_allclose(out1, einsum_attention(q1, k1, v1, bias, mask), atol=1e-5)
    raw = lambda q, k: np.einsum("bihd,bjhd->bhij", np.asarray(q, np.float64), np.asarray(k, np.float64)) * D**-0.5
    expected_s2 = raw(q2, k2) + raw(q1, k1) + 2 * np.asarray(bias, np.float64)
    np.testing.assert_allclose(s2, expected_s2, atol=1e-4)
    w = np.where(np.asarray(mask), expected_s2, -np.inf)
    w = np.exp(w - w.max(-1, keepdims=True))
    expected_out2 = np.einsum("bhij,bjhd->bihd", w / w.sum(-1, keepdims=True), np.asarray(v2, np.float64))
    np.testing.assert_allclose(out2, expected_out2, atol=1e-5)


# --- gradients ---


def test_gradients_are_finite_for_every_kind():
    q, k, v = _qkv(seed=9)
    valid = _valid(lengths=(N, 0))  # the second row has no valid key at all
    seg = jnp.asarray(np.arange(N) >= 9, jnp.int32)[None].repeat(B, 0)
    w = orthogonal_random_features(jax.random.key(2), 16, D)
    kinds = {
        "linear": lambda q, k, v: linear_attention(q, k, v, key_valid=valid),
        "linear_causal": lambda q, k, v: linear_attention(q, k, v, causal=True, key_valid=valid, chunk_size=8),
        "performer": lambda q, k, v: performer_attention(q, k, v, w, key_valid=valid),
        "performer_causal": lambda q, k, v: performer_attention(q, k, v, w, causal=True, key_valid=valid),
        "linear_unilm": lambda q, k, v: linear_attention(q, k, v, key_valid=valid, segment_ids=seg, chunk_size=8),
        "performer_unilm": lambda q, k, v: performer_attention(q, k, v, w, key_valid=valid, segment_ids=seg),
        "nystrom": lambda q, k, v: nystrom_attention(q, k, v, 5, key_valid=valid),
        "realformer": lambda q, k, v: residual_attention(q, k, v, residual_attention(q, k, v)[1])[0],
    }
    for name, fn in kinds.items():
        out = fn(q, k, v)
        assert np.isfinite(np.asarray(out)).all(), name
        grads = jax.grad(lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v) ** 2), argnums=(0, 1, 2))(q, k, v)
        for g in grads:
            assert np.isfinite(np.asarray(g)).all(), name
        assert np.abs(np.asarray(grads[0][0])).sum() > 0, name
