"""T5 model behaviour: the T5 PEGASUS switches against their formulas, KV-cache decoding, layer scanning."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import t5pegasus as tp
from t5pegasus.models.layers import GatedMLP, MultiHeadAttention
from tests.test_masks_buckets import formula_bucket


def tiny(**kw) -> tp.T5Config:
    return tp.T5Config.preset("tiny", **kw)


def setup_model(cfg, seed=0, src=9, tgt=7):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, cfg.vocab_size, (2, src))
    enc[1, src - 3:] = cfg.pad_token_id
    dec = rng.integers(2, cfg.vocab_size, (2, tgt))
    model = tp.models.T5(cfg)
    enc, dec = jnp.asarray(enc, jnp.int32), jnp.asarray(dec, jnp.int32)
    params = tp.models.unbox(model.init(jax.random.key(seed), enc, dec)["params"])
    return model, params, enc, dec


def test_scale_logits_is_d_model_power():
    model, params, enc, dec = setup_model(tiny(scale_logits=False))
    off = model.apply({"params": params}, enc, dec)
    on = tp.models.T5(tiny(scale_logits=True)).apply({"params": params}, enc, dec)
    np.testing.assert_allclose(np.asarray(on), np.asarray(off) * 32**-0.5, rtol=1e-5, atol=1e-7)


def test_erf_gelu_feed_forward_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 8)).astype(np.float32) * 3
    erf = np.vectorize(math.erf)
    outs = {}
    for act in ("gelu-erf", "gelu"):
        mlp = GatedMLP(d_ff=16, activation=act, gated=True)
        p = tp.models.unbox(mlp.init(jax.random.key(1), jnp.asarray(x))["params"])
        outs[act] = np.asarray(mlp.apply({"params": p}, jnp.asarray(x)), np.float64)
    a = x.astype(np.float64) @ np.asarray(p["wi_0"]["kernel"], np.float64)
    b = x.astype(np.float64) @ np.asarray(p["wi_1"]["kernel"], np.float64)
    exact = (0.5 * a * (1 + erf(a / math.sqrt(2)))) * b @ np.asarray(p["wo"]["kernel"], np.float64)
    tanh = (0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3)))) * b
    tanh = tanh @ np.asarray(p["wo"]["kernel"], np.float64)
    np.testing.assert_allclose(outs["gelu-erf"], exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs["gelu"], tanh, rtol=1e-5, atol=1e-5)
    assert np.abs(exact - tanh).max() > 1e-4  # the two forms really differ


def _capture_cross_attention(model, params, enc, dec):
    """Record (bias, inputs, output) of every cross-attention call."""
    seen = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, MultiHeadAttention) and context.module.name == "cross_attention" \
                and context.method_name == "__call__":
            seen.append((kwargs.get("bias"), args[0], kwargs["memory"], kwargs["mask"], out, context.module))
        return out

    with nn.intercept_methods(interceptor):
        model.apply({"params": params}, enc, dec)
    return seen


def test_cross_attention_bias_formula():
    cfg = tiny(cross_attention_bias=True)
    model, params, enc, dec = setup_model(cfg)
    calls = _capture_cross_attention(model, params, enc, dec)
    assert len(calls) == cfg.num_decoder_layers
    table = np.asarray(params["decoder"]["relpos_bias"]["rel_embedding"])
    s_len, t_len = enc.shape[1], dec.shape[1]
    buckets = np.array([[formula_bucket(j - i, False, cfg.relative_buckets, cfg.relative_max_distance)
                         for j in range(s_len)] for i in range(t_len)])
    want_bias = table[buckets].transpose(2, 0, 1)[None]  # decoder's table, causal buckets, dec x enc
    layer = params["decoder"]["layers_0"]["cross_attention"]
    bias, x, memory, _, out, _ = calls[0]
    np.testing.assert_allclose(np.asarray(bias), want_bias, rtol=1e-6)
    # The layer output is softmax(q k^T + bias, key padding) v, projected: checked in float64.
    f64 = lambda a: np.asarray(a, np.float64)
    q = np.einsum("bsd,dhk->bshk", f64(x), f64(layer["query"]["kernel"]))
    k = np.einsum("bsd,dhk->bshk", f64(memory), f64(layer["key"]["kernel"]))
    v = np.einsum("bsd,dhk->bshk", f64(memory), f64(layer["value"]["kernel"]))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) + want_bias
    valid = np.asarray(enc != cfg.pad_token_id)[:, None, None, :]
    s = np.where(valid, s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    want_out = np.einsum("bhqk,bkhd,hdo->bqo", w, v, f64(layer["out"]["kernel"]))
    np.testing.assert_allclose(np.asarray(out), want_out, rtol=1e-4, atol=1e-5)
    # Switched off (HF mT5): no bias in cross-attention, and the logits change.
    assert all(c[0] is None for c in _capture_cross_attention(tp.models.T5(tiny()), params, enc, dec))
    assert not np.allclose(model.apply({"params": params}, enc, dec),
                           tp.models.T5(tiny()).apply({"params": params}, enc, dec))


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("pegasus", [False, True])
def test_cached_decoding_equals_full_forward(scan, pegasus):
    cfg = tiny(scan_layers=scan, cross_attention_bias=pegasus, scale_logits=pegasus)
    model, params, enc, dec = setup_model(cfg, tgt=8)
    if scan:
        params = tp.models.stack_layers(params) if "layers" not in params["encoder"] else params
    full = model.apply({"params": params}, enc, dec)
    mask = enc != cfg.pad_token_id
    encoded = model.apply({"params": params}, enc, method=tp.models.T5.encode)
    cache = tp.models.init_cache(model, params, encoded, mask, max_length=10)
    step = jax.jit(lambda c, ids: tp.models.decode_step(model, params, c, encoded, mask, ids))
    outs = []
    for t in range(dec.shape[1]):
        logits, cache = step(cache, dec[:, t:t + 1])
        outs.append(logits)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full), rtol=1e-5, atol=1e-5)


def test_scan_equals_unrolled():
    model, params, enc, dec = setup_model(tiny())
    want = model.apply({"params": params}, enc, dec)
    scanned = tp.models.T5(tiny(scan_layers=True))
    init_tree = jax.eval_shape(lambda k: scanned.init(k, enc, dec)["params"], jax.random.key(0))
    stacked = tp.models.stack_layers(params)
    assert jax.tree_util.tree_structure(tp.models.unbox(init_tree)) == jax.tree_util.tree_structure(stacked)
    got = scanned.apply({"params": stacked}, enc, dec)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    # Remat changes memory, never values.
    remat = tp.models.T5(tiny(scan_layers=True, remat=True)).apply({"params": stacked}, enc, dec)
    np.testing.assert_allclose(np.asarray(remat), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_decoder_padding_mask_and_dropout():
    cfg = tiny(dropout_rate=0.5)
    model, params, enc, dec = setup_model(cfg)
    a = model.apply({"params": params}, enc, dec, deterministic=False, rngs={"dropout": jax.random.key(1)})
    b = model.apply({"params": params}, enc, dec, deterministic=False, rngs={"dropout": jax.random.key(2)})
    c = model.apply({"params": params}, enc, dec)
    assert not np.allclose(a, b) and bool(jnp.isfinite(a).all())
    np.testing.assert_allclose(c, model.apply({"params": params}, enc, dec))
    # With a decoder mask, changing a padded target token changes nothing before it.
    dmask = jnp.ones_like(dec).at[:, -2:].set(0)
    d1 = model.apply({"params": params}, enc, dec, decoder_mask=dmask)
    d2 = model.apply({"params": params}, enc, dec.at[:, -1].set(5), decoder_mask=dmask)
    np.testing.assert_allclose(np.asarray(d1[:, :-2]), np.asarray(d2[:, :-2]), rtol=1e-6)


def test_bfloat16_compute_is_close():
    model, params, enc, dec = setup_model(tiny())
    want = model.apply({"params": params}, enc, dec)
    got = tp.models.T5(tiny(dtype="bfloat16")).apply({"params": params}, enc, dec)
    assert got.dtype == jnp.float32 and bool(jnp.isfinite(got).all())
    assert float(jnp.abs(got - want).max() / jnp.abs(want).max()) < 5e-2
