"""Softmax-attention backends: same results as the einsum reference, and the selection rule per platform."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5pegasus.attention import dot_product_attention, einsum_attention, kernels
from t5pegasus.attention.kernels import Call, resolve_backend
from tests.pallas_interpret import hlo_interpret_mode


def _qkv(b=2, t=12, s=12, h=3, d=16, dtype=jnp.float32, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (b, t, h, d), dtype)
    k = jax.random.normal(keys[1], (b, s, h, d), dtype)
    v = jax.random.normal(keys[2], (b, s, h, d), dtype)
    return q, k, v


def _numpy_attention(q, k, v, bias, mask, scale):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale + (0 if bias is None else np.asarray(bias, np.float64))
    if mask is not None:
        s = np.where(np.asarray(mask), s, -1e30)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", w, v)


def _bias_and_mask(b, h, t, s):
    bias = jax.random.normal(jax.random.key(7), (1, h, t, s))
    lengths = jnp.array([s, s - 5])[:b]
    mask = (jnp.arange(s)[None, :] < lengths[:, None])[:, None, None, :]  # key padding [b, 1, 1, s]
    return bias, mask


@pytest.mark.parametrize("is_causal", [False, True])
def test_einsum_and_xla_match_numpy_with_bias_and_mask(is_causal):
    q, k, v = _qkv()
    bias, mask = _bias_and_mask(2, 3, 12, 12)
    full_mask = mask & np.tril(np.ones((12, 12), bool)) if is_causal else mask
    expected = _numpy_attention(q, k, v, bias, full_mask, 0.3)
    for backend in ("einsum", "xla"):
        out = dot_product_attention(q, k, v, bias, mask, 0.3, is_causal=is_causal, backend=backend)
        np.testing.assert_allclose(out, expected, atol=2e-5, err_msg=backend)


def test_backends_agree_on_cross_attention_and_low_rank_bias_and_mask():
    q, k, v = _qkv(t=5, s=9)
    bias = jnp.linspace(-1, 1, 9)  # 1-D bias over keys, broadcast like the reference allows
    mask = jnp.ones((5, 9), bool).at[:, -2:].set(False)  # 2-D mask
    ref = dot_product_attention(q, k, v, bias=bias, mask=mask, backend="einsum")
    out = dot_product_attention(q, k, v, bias=bias, mask=mask, backend="xla")
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_fully_masked_rows_stay_finite_and_agree():
    q, k, v = _qkv()
    mask = jnp.zeros((2, 1, 12, 12), bool).at[0].set(True)  # batch 1 sees no key at all
    ref = dot_product_attention(q, k, v, mask=mask, backend="einsum")
    out = dot_product_attention(q, k, v, mask=mask, backend="xla")
    assert np.isfinite(np.asarray(ref)).all()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_bfloat16_within_dtype_tolerance():
    q, k, v = _qkv(dtype=jnp.bfloat16)
    bias, mask = _bias_and_mask(2, 3, 12, 12)
    expected = _numpy_attention(q, k, v, bias, mask, 16**-0.5)
    for backend in ("einsum", "xla"):
        out = dot_product_attention(q, k, v, bias=bias, mask=mask, backend=backend)
        assert out.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=3e-2, err_msg=backend)


def test_gradients_finite_and_equal_across_backends():
    q, k, v = _qkv()
    bias, mask = _bias_and_mask(2, 3, 12, 12)

    def loss(q, k, v, bias, backend):
        return jnp.sum(dot_product_attention(q, k, v, bias=bias, mask=mask, backend=backend) ** 2)

    grads = {b: jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias, b) for b in ("einsum", "xla")}
    for g_ref, g in zip(grads["einsum"], grads["xla"], strict=True):
        assert np.isfinite(np.asarray(g_ref)).all()
        np.testing.assert_allclose(g, g_ref, atol=1e-4)


def _call(platform, dtype=jnp.bfloat16, t=256, s=256, d=64, bias=False, mask=False, training=True):
    return Call(platform, jnp.dtype(dtype), t, s, d, bias, mask, training)


def test_auto_picks_fastest_capable_backend_per_platform():
    assert resolve_backend("auto", _call("cpu")) == "einsum"
    assert resolve_backend("auto", _call("gpu")) == "cudnn"
    assert resolve_backend("auto", _call("gpu", bias=True, mask=True)) == "cudnn"
    assert resolve_backend("auto", _call("gpu", dtype=jnp.float32)) == "xla"  # cuDNN takes bf16/fp16 only
    assert resolve_backend("auto", _call("gpu", d=256)) == "xla"
    assert resolve_backend("auto", _call("gpu", d=60)) == "xla"
    assert resolve_backend("auto", _call("gpu", t=255, bias=True)) == "xla"  # odd length with a bias gradient
    assert resolve_backend("auto", _call("gpu", t=255, bias=True, training=False)) == "cudnn"
    assert resolve_backend("auto", _call("tpu")) == "splash"
    assert resolve_backend("auto", _call("tpu", bias=True)) == "flash"  # splash cannot take a bias
    assert resolve_backend("auto", _call("tpu", mask=True)) == "flash"
    assert resolve_backend("auto", _call("tpu", t=200)) == "einsum"  # not a multiple of the 128 tile


def test_named_backend_falls_back_when_it_cannot_take_the_call():
    assert resolve_backend("cudnn", _call("cpu")) == "xla"
    assert resolve_backend("splash", _call("cpu")) == "einsum"
    assert resolve_backend("splash", _call("tpu", bias=True)) == "flash"
    assert resolve_backend("flash", _call("gpu")) == "einsum"
    assert resolve_backend("einsum", _call("tpu")) == "einsum"
    assert resolve_backend("xla", _call("gpu")) == "xla"
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("triton", _call("gpu"))


def test_fused_only_backends_fall_back_to_reference_on_cpu():
    q, k, v = _qkv()
    bias, mask = _bias_and_mask(2, 3, 12, 12)
    ref = einsum_attention(q, k, v, bias=bias, mask=mask)
    for backend in ("cudnn", "flash", "splash", "auto"):
        out = dot_product_attention(q, k, v, bias, mask, backend=backend)
        np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=backend)


@pytest.mark.parametrize("is_causal", [False, True])
def test_splash_wrapper_matches_reference_in_interpret_mode(is_causal):
    q, k, v = _qkv(b=2, t=128, s=128, h=2, d=32)
    out = kernels.splash_attention(q, k, v, scale=0.2, is_causal=is_causal, interpret=True)
    ref = einsum_attention(q, k, v, scale=0.2, is_causal=is_causal)
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_flash_wrapper_keeps_bias_unscaled_and_folds_mask_in_interpret_mode():
    q, k, v = _qkv(b=1, t=128, s=128, h=2, d=32)
    bias = jax.random.normal(jax.random.key(3), (1, 2, 128, 128))
    mask = (jnp.arange(128) < 100)[None, None, None, :]
    with hlo_interpret_mode():
        out = kernels.flash_attention(q, k, v, bias, mask, scale=0.2, is_causal=True)
    ref = einsum_attention(q, k, v, bias, mask, scale=0.2, is_causal=True)
    np.testing.assert_allclose(out, ref, atol=1e-4)


def _mesh_and_rules():
    """A data=4 x tensor=2 mesh of the 8 simulated devices with the fsdp_tensor rules (batch and heads split)."""
    from t5pegasus.training import mesh as meshlib

    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    return meshlib.make_mesh(4, 1, 2), meshlib.rules_for("fsdp_tensor")


@pytest.mark.parametrize("kernel", ["flash", "splash"])
def test_pallas_kernels_run_per_shard_under_a_mesh(kernel):
    """Under a sharded mesh the Pallas kernels run through shard_map over batch and heads (interpret mode on the
    simulated CPU mesh): output and gradients equal the einsum reference, and the output stays sharded."""
    import flax.linen as nn
    mesh, rules = _mesh_and_rules()
    q, k, v = _qkv(b=4, t=128, s=128, h=2, d=32)
    bias = jax.random.normal(jax.random.key(3), (1, 2, 128, 128)) if kernel == "flash" else None
    mask = ((jnp.arange(128)[None, :] < jnp.array([128, 100, 64, 9])[:, None])[:, None, None, :]
            if kernel == "flash" else None)
    fn = kernels.FUSED[kernel]

    def fused(q, k, v):
        return kernels.per_shard(fn, jax.sharding.get_abstract_mesh(), q, k, v, bias, mask, scale=0.2, is_causal=True)

    def ref(q, k, v):
        return einsum_attention(q, k, v, bias, mask, scale=0.2, is_causal=True)

    with jax.set_mesh(mesh), nn.logical_axis_rules(rules), hlo_interpret_mode():
        out = jax.jit(fused)(q, k, v)
        grads = jax.jit(jax.grad(lambda *x: (fused(*x) ** 2).sum(), argnums=(0, 1, 2)))(q, k, v)
    assert out.sharding.spec[0] is not None and out.sharding.spec[2] == "tensor"  # batch and heads split
    np.testing.assert_allclose(out, ref(q, k, v), atol=1e-5)
    want = jax.grad(lambda *x: (ref(*x) ** 2).sum(), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(grads, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5 * float(jnp.abs(w).max()))


def test_dot_product_attention_routes_to_the_per_shard_kernel_on_tpu(monkeypatch):
    """On a TPU (pretended here, kernels interpreted) under a mesh, "auto" picks splash without a bias and
    flash with one, and both go through shard_map (a Pallas call is not auto-partitioned)."""
    import flax.linen as nn
    mesh, rules = _mesh_and_rules()
    used = []
    real = kernels.per_shard
    monkeypatch.setattr(kernels, "per_shard", lambda fn, *a, **kw: used.append(fn.__name__) or real(fn, *a, **kw))
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    q, k, v = _qkv(b=4, t=128, s=128, h=2, d=32)
    bias = jax.random.normal(jax.random.key(3), (1, 2, 128, 128))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules), hlo_interpret_mode():
        plain = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, is_causal=True))(q, k, v)
        biased = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, bias, is_causal=True))(q, k, v)
    assert used == ["splash_attention", "flash_attention"]
    np.testing.assert_allclose(plain, einsum_attention(q, k, v, is_causal=True), atol=1e-5)
    np.testing.assert_allclose(biased, einsum_attention(q, k, v, bias, is_causal=True), atol=1e-5)


def test_cudnn_wrapper_hands_cudnn_full_size_bias_and_mask(monkeypatch):
    """No GPU here: check what the wrapper passes to jax.nn.dot_product_attention(implementation="cudnn")
    (cuDNN needs the trailing (q, k) dims in full) and that it means the same attention."""
    real = jax.nn.dot_product_attention
    seen = {}

    def fake(q, k, v, bias=None, mask=None, *, implementation=None, **kw):
        seen.update(implementation=implementation, bias=bias.shape, mask=mask.shape, dtype=bias.dtype)
        return real(q, k, v, bias=bias, mask=mask, implementation="xla", **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    q, k, v = _qkv(t=6, s=10)
    bias = jnp.linspace(-1, 1, 10)  # 1-D over keys
    mask = (jnp.arange(10) < 8)[None, None, None, :]
    out = kernels.cudnn_attention(q, k, v, bias, mask, scale=0.3, is_causal=True)
    assert seen == {"implementation": "cudnn", "bias": (1, 1, 6, 10), "mask": (1, 1, 6, 10), "dtype": q.dtype}
    np.testing.assert_allclose(out, einsum_attention(q, k, v, bias, mask, 0.3, is_causal=True), atol=1e-5)


def test_memory_attention_equals_einsum_against_the_memory_repeated_per_copy():
    """Rows example-major (3 copies of each of 2 examples), memory, bias and mask per example."""
    from t5pegasus.attention import memory_attention, memory_layout

    q, _, _ = _qkv(b=6, t=2, s=9)
    _, k, v = _qkv(b=2, t=2, s=9, seed=1)
    bias, mask = _bias_and_mask(2, 3, 2, 9)
    bias = bias * jnp.array([1.0, -1.0])[:, None, None, None]  # per example, so a wrong pairing shows
    got = memory_attention(q, *memory_layout(k, v), bias=bias, mask=mask, scale=0.3)
    rep = lambda x: jnp.repeat(x, 3, axis=0)
    want = einsum_attention(q, rep(k), rep(v), bias=rep(bias), mask=rep(mask), scale=0.3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="copies"):
        memory_attention(q[:5], *memory_layout(k, v))


def test_softmax_and_its_gradient_equal_jax_nn_softmax():
    from t5pegasus.attention.dot_product import softmax

    x = jax.random.normal(jax.random.key(3), (3, 5, 17)) * 4
    x = x.at[1, 2].set(-1e30)  # a fully masked row (finite mask value): uniform, finite gradient
    cot = jax.random.normal(jax.random.key(4), x.shape)
    np.testing.assert_allclose(softmax(x), jax.nn.softmax(x, axis=-1), rtol=1e-6, atol=1e-7)
    ours = jax.grad(lambda v: jnp.sum(softmax(v) * cot))(x)
    want = jax.grad(lambda v: jnp.sum(jax.nn.softmax(v, axis=-1) * cot))(x)
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)
    second = jax.grad(lambda v: jnp.sum(jax.grad(lambda u: jnp.sum(softmax(u) * cot))(v) ** 2))(x)
    assert np.isfinite(np.asarray(second)).all()


def test_causal_models_hand_is_causal_to_the_kernels(monkeypatch):
    """GPT and the T5 decoder pass causality as `is_causal` (not a dense mask): on a (pretended, interpreted)
    TPU an unpadded GPT row reaches splash, the T5 decoder's self-attention (relative bias) flash with
    is_causal and no mask, and both give the CPU einsum path's logits."""
    import t5pegasus as tp

    ids = jax.random.randint(jax.random.key(0), (2, 128), 2, 128)
    gpt = tp.models.GPT(tp.GPTConfig.preset("tiny", max_position_embeddings=128, num_layers=1))
    t5 = tp.models.T5(tp.T5Config.preset("tiny", num_encoder_layers=1, num_decoder_layers=1))
    gpt_params = gpt.init(jax.random.key(1), ids)["params"]
    t5_params = t5.init(jax.random.key(2), ids, ids)["params"]
    want = (gpt.apply({"params": gpt_params}, ids), t5.apply({"params": t5_params}, ids, ids))
    calls = []
    for name, extra in (("flash", {}), ("splash", {"interpret": True})):  # flash: interpreted by the mode below
        real = kernels.FUSED[name]
        monkeypatch.setitem(kernels.FUSED, name, lambda *a, _n=name, _f=real, _x=extra, **kw: calls.append(
            (_n, kw["is_causal"], kw.get("mask") is not None)) or _f(*a, **kw, **_x))
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    gpt_out = gpt.apply({"params": gpt_params}, ids)
    assert calls == [("splash", True, False)]
    with hlo_interpret_mode():
        t5_out = t5.apply({"params": t5_params}, ids, ids)
    # encoder (bias + padding mask), decoder self-attention (bias, is_causal), cross-attention (mask)
    assert calls[1:] == [("flash", False, True), ("flash", True, False), ("flash", False, True)]
    for g, w in zip((gpt_out, t5_out), want, strict=True):
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-5)
