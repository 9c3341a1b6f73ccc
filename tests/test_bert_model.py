"""BERT/UniLM behaviour: the masks against their definitions, cached UniLM decoding, conditional LayerNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import t5pegasus as tp
from t5pegasus.models import bert
from t5pegasus.models.layers import ConditionalLayerNorm


def tiny(**kw) -> tp.BertConfig:
    return tp.BertConfig.preset("tiny", **kw)


N = 12  # one shape for every example: the masks compile once


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 1), min_size=N, max_size=N), min_size=3, max_size=3),
       st.lists(st.lists(st.booleans(), min_size=N, max_size=N), min_size=3, max_size=3))
def test_unilm_mask_equals_definition(rows, valid_rows):
    n = N
    seg, valid = np.array(rows), np.array(valid_rows)
    got = np.asarray(bert.attention_mask("unilm", jnp.asarray(valid), jnp.asarray(seg)))[:, 0]
    for b in range(len(rows)):
        c = np.cumsum(seg[b])
        want = [[bool(valid[b, j]) and c[j] <= c[i] for j in range(n)] for i in range(n)]
        assert got[b].tolist() == want
    causal = np.asarray(bert.attention_mask("causal", jnp.asarray(valid), jnp.asarray(seg)))[:, 0]
    assert causal.tolist() == [[[bool(valid[b, j]) and j <= i for j in range(n)] for i in range(n)]
                               for b in range(len(rows))]


@settings(max_examples=30, deadline=None)
@given(st.integers(1, N // 2), st.integers(0, N // 2))
def test_unilm_mask_seq2seq_layout(source, target):
    """[CLS] source [SEP] target [SEP] pad: source sees all source, target sees source and earlier target."""
    n, pad = N, N - source - target
    seg = np.array([[0] * source + [1] * target + [0] * pad])
    valid = np.arange(n)[None] < source + target
    got = np.asarray(bert.attention_mask("unilm", jnp.asarray(valid), jnp.asarray(seg)))[0, 0]
    for i in range(source + target):
        for j in range(n):
            want = j < source if i < source else j <= i
            assert got[i, j] == want, (i, j)


def _seq2seq_batch(cfg, src=7, tgt=6):
    rng = np.random.default_rng(0)
    source = rng.integers(5, cfg.vocab_size, (2, src))
    source[1, src - 3:] = cfg.pad_token_id  # a shorter source, right-padded
    target = rng.integers(5, cfg.vocab_size, (2, tgt))
    ids = np.concatenate([source, target], 1)
    seg = np.concatenate([np.zeros_like(source), np.ones_like(target)], 1)
    return jnp.asarray(ids, jnp.int32), jnp.asarray(seg, jnp.int32), ids != cfg.pad_token_id


@pytest.mark.parametrize("attention,scan,kind", [("unilm", False, "softmax"), ("unilm", True, "softmax"),
                                              ("causal", False, "softmax"), ("unilm", True, "performer")])
def test_cached_generation_equals_full_forward(attention, scan, kind):
    """Source in one cached call, then target tokens one by one: equal to one full forward pass (UniLM with
    performer attention too: each chunk attends to the cache with the UniLM visibility, under jit and scan)."""
    cfg = tiny(attention=attention, scan_layers=scan, attention_kind=kind, performer_features=16)
    ids, seg, valid = _seq2seq_batch(cfg)
    model = tp.models.Bert(cfg)
    params = tp.models.unbox(jax.jit(model.init)(jax.random.key(0), ids, seg)["params"])
    full = jax.jit(model.apply)({"params": params}, ids, seg)
    src = 7
    cache = bert.init_cache(model, params, batch_size=2, max_length=ids.shape[1] + 3)
    out, cache = jax.jit(lambda c, i, s, m: bert.decode_step(model, params, c, i, s, m))(
        cache, ids[:, :src], seg[:, :src], jnp.asarray(valid[:, :src]))
    real = valid[:, :src]
    np.testing.assert_allclose(np.asarray(out.logits)[real], np.asarray(full.logits[:, :src])[real], rtol=1e-5,
                               atol=1e-5)
    step = jax.jit(lambda c, i, s: bert.decode_step(model, params, c, i, s))
    for t in range(src, ids.shape[1]):
        out, cache = step(cache, ids[:, t:t + 1], seg[:, t:t + 1])
        np.testing.assert_allclose(np.asarray(out.logits[:, 0]), np.asarray(full.logits[:, t]), rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(np.asarray(out.hidden[:, 0]), np.asarray(full.hidden[:, t]), rtol=1e-5,
                                   atol=1e-5)


def test_bidirectional_bert_refuses_to_decode():
    model = tp.models.Bert(tiny())
    ids = jnp.ones((1, 4), jnp.int32)
    params = model.init(jax.random.key(0), ids)["params"]
    with pytest.raises(tp.UserError, match="bidirectional"):
        bert.init_cache(model, params, 1, 8)


def test_unilm_target_cannot_see_later_target():
    """Changing a later target token leaves earlier target positions alone, but changes the source's view."""
    cfg = tiny(attention="unilm")
    ids, seg, _ = _seq2seq_batch(cfg)
    model = tp.models.Bert(cfg)
    params = model.init(jax.random.key(0), ids, seg)["params"]
    a = model.apply({"params": params}, ids, seg).hidden
    b = model.apply({"params": params}, ids.at[:, -1].set(9), seg).hidden
    np.testing.assert_array_equal(np.asarray(a[:, :-1]), np.asarray(b[:, :-1]))
    c = model.apply({"params": params}, ids.at[:, 3].set(9), seg).hidden  # a source token: everyone sees it
    assert not np.allclose(np.asarray(a[0, :3]), np.asarray(c[0, :3]))


def test_conditional_layer_norm_zero_projection_reproduces_plain_model():
    cond_cfg = tiny(attention="unilm", conditional_layer_norm=True, condition_size=6)
    ids, seg, _ = _seq2seq_batch(cond_cfg)
    model = tp.models.Bert(cond_cfg)
    params = tp.models.unbox(jax.jit(model.init)(jax.random.key(0), ids, seg)["params"])
    leaves = jax.tree_util.tree_leaves_with_path(params)
    kernels = [x for path, x in leaves if "condition_" in jax.tree_util.keystr(path)]
    assert len(kernels) == 2 * (1 + 2 * cond_cfg.num_layers + 1) and all(not np.any(k) for k in kernels)

    def strip(tree):
        return {k: strip(v) for k, v in tree.items() if not k.startswith("condition_")} \
            if isinstance(tree, dict) else tree

    plain = tp.models.Bert(tiny(attention="unilm")).apply({"params": strip(params)}, ids, seg)
    condition = jax.random.normal(jax.random.key(1), (2, 6))
    got = model.apply({"params": params}, ids, seg, condition=condition)
    for name in ("hidden", "pooled", "logits"):
        np.testing.assert_array_equal(np.asarray(getattr(got, name)), np.asarray(getattr(plain, name)))
    # Once the projections learn something, the condition matters.
    moved = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.1 if "condition_" in jax.tree_util.keystr(p) else x, params)
    a = model.apply({"params": moved}, ids, seg, condition=condition).logits
    b = model.apply({"params": moved}, ids, seg, condition=-condition).logits
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_conditional_layer_norm_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 8)).astype(np.float32) * 2 + 1
    c = rng.normal(size=(2, 5)).astype(np.float32)
    layer = ConditionalLayerNorm(epsilon=1e-6)
    params = tp.models.unbox(layer.init(jax.random.key(0), jnp.asarray(x), jnp.asarray(c))["params"])
    params = {k: v + rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
    got = np.asarray(layer.apply({"params": params}, jnp.asarray(x), jnp.asarray(c)), np.float64)
    x64 = x.astype(np.float64)
    norm = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
    gamma = params["scale"] + c @ params["condition_scale"]
    beta = params["bias"] + c @ params["condition_bias"]
    np.testing.assert_allclose(got, norm * gamma[:, None] + beta[:, None], rtol=1e-5, atol=1e-5)


def test_dropout_and_bfloat16():
    cfg = tiny(attention="unilm", dropout_rate=0.3)
    ids, seg, _ = _seq2seq_batch(cfg)
    model = tp.models.Bert(cfg)
    params = model.init(jax.random.key(0), ids, seg)["params"]
    a = model.apply({"params": params}, ids, seg, deterministic=False, rngs={"dropout": jax.random.key(1)})
    b = model.apply({"params": params}, ids, seg, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a.logits, b.logits) and bool(jnp.isfinite(a.logits).all())
    want = model.apply({"params": params}, ids, seg).logits
    got = tp.models.Bert(tiny(attention="unilm", dtype="bfloat16")).apply({"params": params}, ids, seg).logits
    assert got.dtype == jnp.float32
    assert float(jnp.abs(got - want).max() / jnp.abs(want).max()) < 5e-2


@pytest.mark.parametrize("name", tp.BertConfig.presets())
def test_bert_preset_param_count(name):
    c = tp.BertConfig.preset(name)
    d, ff = c.hidden_size, c.intermediate_size
    inner = c.num_heads * c.head_dim
    layer = 4 * d * inner + 3 * inner + d + 2 * d * ff + ff + d + 4 * d
    want = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * d + 2 * d + c.num_layers * layer
    want += d * d + d  # pooler
    want += d * d + d + 2 * d + c.vocab_size  # MLM transform, its LayerNorm, output bias (decoder tied)
    model = tp.models.Bert(c)
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 4), jnp.int32))["params"], jax.random.key(0))
    assert tp.models.count_params(shapes) == want
    if name == "bert-base-chinese":
        assert c.vocab_size == 21128 and 102e6 < want < 104e6
    if name in ("unilm-base", "simbert-base"):  # the bert-base-chinese shape with the seq2seq mask
        base = tp.BertConfig.preset("bert-base-chinese")
        assert c.mask == "unilm" and base.mask == "bidirectional"
        assert c.replace(mask="bidirectional", pooler_activation=base.pooler_activation) == base
