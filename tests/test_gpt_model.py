"""GPT behaviour: cached decoding equals the full forward, preset sizes (CPM-LM 2.6B without allocation)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import t5pegasus as tp
from t5pegasus.models import gpt
from t5pegasus.training.objectives import make_objective


def analytic_gpt_params(c: tp.GPTConfig) -> int:
    d, ff, inner = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim
    layer = 4 * d * inner + 3 * inner + d + 2 * d * ff + ff + d + 4 * d
    return (c.vocab_size + c.max_position_embeddings) * d + c.num_layers * layer + 2 * d


@pytest.mark.parametrize("name", tp.GPTConfig.presets())
def test_gpt_preset_param_count(name):
    cfg = tp.GPTConfig.preset(name)
    model = tp.models.GPT(cfg)
    shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 4), jnp.int32))["params"], jax.random.key(0))
    assert tp.models.count_params(shapes) == analytic_gpt_params(cfg)
    if name == "gpt2":
        assert tp.models.count_params(shapes) == 124_439_808  # HF GPT2LMHeadModel("gpt2")
    if name == "cpm-lm":
        assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.head_dim) == (32, 2560, 32, 80)
        assert 2.55e9 < tp.models.count_params(shapes) < 2.65e9


@pytest.mark.parametrize("scan", [False, True])
def test_cached_decoding_equals_full_forward(scan):
    cfg = tp.GPTConfig.preset("tiny", scan_layers=scan)
    model = tp.models.GPT(cfg)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(2, cfg.vocab_size, (2, 12)), jnp.int32)
    prompt = 5
    valid = np.ones((2, 12), bool)
    valid[1, 3:prompt] = False  # row 1: a shorter prompt, right-padded inside the prompt chunk
    valid = jnp.asarray(valid)
    params = tp.models.unbox(jax.jit(model.init)(jax.random.key(0), ids)["params"])
    full = jax.jit(model.apply)({"params": params}, ids, valid)
    cache = gpt.init_cache(model, params, batch_size=2, max_length=16)
    logits, cache = gpt.decode_step(model, params, cache, ids[:, :prompt], valid[:, :prompt])
    real = np.asarray(valid[:, :prompt])
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(full[:, :prompt])[real], rtol=1e-5, atol=1e-5)
    step = jax.jit(lambda c, i: gpt.decode_step(model, params, c, i))
    for t in range(prompt, ids.shape[1]):
        logits, cache = step(cache, ids[:, t:t + 1])
        np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(full[:, t]), rtol=1e-5, atol=1e-5)
    assert int(cache["decode_state"]["position"]) == ids.shape[1]


def test_lm_loss_is_next_token_cross_entropy():
    cfg = tp.GPTConfig.preset("tiny")
    model = tp.models.GPT(cfg)
    ids = jnp.asarray(np.random.default_rng(1).integers(2, cfg.vocab_size, (2, 8)), jnp.int32)
    mask = jnp.ones((2, 8), bool).at[1, 6:].set(False)
    params = jax.jit(model.init)(jax.random.key(0), ids)["params"]
    # The pipeline's format: targets are the ids shifted by one, weighted where both tokens are real. The
    # objective runs the model without the mask: causal attention keeps padding after a position out of it.
    targets = jnp.pad(ids[:, 1:], ((0, 0), (0, 1)))
    weights = jnp.pad(mask[:, 1:] & mask[:, :-1], ((0, 0), (0, 1))).astype(jnp.int32)
    batch = {"ids": ids, "targets": targets, "weights": weights}
    objective = make_objective("lm", cfg)

    def lm_loss(p):
        sums = objective.loss(p, batch, deterministic=True)
        return sums.loss / jnp.maximum(sums.weight, 1.0), {"tokens": sums.weight}

    (loss, metrics), grads = jax.jit(jax.value_and_grad(lm_loss, has_aux=True))(params)
    logits = np.asarray(jax.jit(model.apply)({"params": params}, ids, mask), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = [-logp[b, i, int(ids[b, i + 1])] for b in range(2) for i in range(7) if mask[b, i + 1]]
    assert int(metrics["tokens"]) == len(picked) == 7 + 5
    np.testing.assert_allclose(float(loss), np.mean(picked), rtol=1e-5)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree_util.tree_leaves(grads))
