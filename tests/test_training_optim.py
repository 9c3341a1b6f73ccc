"""Schedules, clipping, weight-decay mask, EMA and the loss against their formulas; non-finite steps skip."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import t5pegasus as tp
from t5pegasus.errors import UserError
from t5pegasus.training.losses import cross_entropy
from t5pegasus.training.optim import OptimConfig, clip_by_global_norm_soft, decay_mask, make_optimizer
from t5pegasus.training.schedules import make_schedule, piecewise_linear, warmup_cosine, warmup_rsqrt
from t5pegasus.training.state import TrainState, ema_params, ema_transform


def test_piecewise_linear_t5_pegasus_and_multi_point():
    f = piecewise_linear({10000: 1.0}, 2e-4)
    for step, want in [(0, 0.0), (2500, 5e-5), (10000, 2e-4), (50000, 2e-4)]:
        assert float(f(step)) == pytest.approx(want, rel=1e-6, abs=1e-12)
    g = piecewise_linear({0: 0.5, 100: 1.0, 300: 0.0})
    assert [float(g(s)) for s in (0, 50, 100, 200, 300, 999)] == pytest.approx([0.5, 0.75, 1.0, 0.5, 0.0, 0.0])
    with pytest.raises(UserError):
        piecewise_linear({})


def test_rsqrt_and_cosine():
    f = warmup_rsqrt(1.0, 100)
    assert [float(f(s)) for s in (0, 50, 100, 400)] == pytest.approx([0.0, 0.5, 1.0, 0.5])
    c = warmup_cosine(1.0, 10, 110)
    assert float(c(10)) == pytest.approx(1.0)
    assert float(c(60)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)), abs=1e-6)
    assert float(c(110)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(UserError):
        make_schedule("exponential", 1.0)


def test_soft_and_hard_clipping():
    g = {"a": jnp.array([3.0, 4.0])}  # norm 5
    soft, _ = clip_by_global_norm_soft(1.0).update(g, None)
    assert np.allclose(soft["a"], np.array([3.0, 4.0]) / 6.0)
    hard, _ = optax.clip_by_global_norm(1.0).update(g, optax.clip_by_global_norm(1.0).init(g))
    assert np.allclose(hard["a"], [0.6, 0.8])


def test_decay_mask_excludes_norms_and_biases():
    params = {"attention_norm": {"scale": jnp.ones(4)}, "dense": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}}
    mask = decay_mask(params)
    assert mask == {"attention_norm": {"scale": False}, "dense": {"kernel": True, "bias": False}}
    tx, _ = make_optimizer(OptimConfig(learning_rate=0.1, schedule="constant", weight_decay=0.5, clip=0))
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert np.allclose(updates["dense"]["kernel"], -0.1 * 0.5)  # decoupled decay only
    assert np.allclose(updates["dense"]["bias"], 0) and np.allclose(updates["attention_norm"]["scale"], 0)


def test_adafactor_runs_on_t5_params():
    cfg = tp.T5Config.preset("tiny")
    params = tp.models.unbox(tp.models.T5(cfg).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32),
                                                    jnp.ones((1, 3), jnp.int32))["params"])
    tx, _ = make_optimizer(OptimConfig(name="adafactor", learning_rate=1e-2, schedule="constant"))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_ema_zero_init_and_bias_correction():
    m = 0.9
    tx = ema_transform(m)
    p0 = {"w": jnp.zeros(2)}
    state = tx.init(p0)
    seq = [jnp.array([1.0, 2.0]), jnp.array([3.0, -1.0]), jnp.array([0.5, 0.5])]
    raw = np.zeros(2)
    for t, p in enumerate(seq, 1):
        _, state = tx.update({"w": p}, state)
        raw = m * raw + (1 - m) * np.asarray(p)
        ts = TrainState(step=jnp.int32(t), params={"w": p}, opt_state=None, ema=state, rng=jnp.zeros(2, jnp.uint32),
                        bad_in_a_row=jnp.int32(0), skipped=jnp.int32(0))
        assert np.allclose(state.ema["w"], raw)  # zero-initialised average
        assert np.allclose(ema_params(ts, m)["w"], raw / (1 - m**t), rtol=1e-6)  # bias-corrected
    # after one step the corrected EMA is exactly the parameters
    _, s1 = tx.update({"w": seq[0]}, tx.init(p0))
    ts1 = TrainState(step=jnp.int32(1), params={"w": seq[0]}, opt_state=None, ema=s1, rng=jnp.zeros(2, jnp.uint32),
                     bad_in_a_row=jnp.int32(0), skipped=jnp.int32(0))
    assert np.allclose(ema_params(ts1, m)["w"], seq[0])


def test_cross_entropy_formulas():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 3, 7)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 7, (2, 3)))
    weights = jnp.asarray([[1, 1, 0], [1, 0, 0]])
    s = cross_entropy(logits, targets, weights, z_loss=1e-2)
    lz = jax.nn.logsumexp(logits, -1)
    nll = lz - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    assert float(s.loss) == pytest.approx(float(jnp.sum((nll + 1e-2 * lz**2) * weights)), rel=1e-6)
    assert float(s.weight) == 3
    ls = cross_entropy(logits, targets, weights, label_smoothing=0.1)
    q = jax.nn.one_hot(targets, 7) * 0.9 + 0.1 / 7
    want = optax.softmax_cross_entropy(logits, q) + jnp.sum(q * jnp.log(q), -1)  # KL(q || p)
    assert float(ls.loss) == pytest.approx(float(jnp.sum(want * weights)), rel=1e-5)


def test_nonfinite_loss_skips_the_update():
    from t5pegasus.training.objectives import make_objective
    from t5pegasus.training.step import make_train_step

    obj = make_objective("seq2seq", tp.T5Config.preset("tiny"))
    batch = obj.dummy_batch(2, {"source": 6, "target": 4})
    params = tp.models.unbox(obj.init(jax.random.PRNGKey(0), batch))
    tx, schedule = make_optimizer(OptimConfig(schedule="constant"))
    state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params), ema=None,
                       rng=jax.random.PRNGKey(1), bad_in_a_row=jnp.int32(0), skipped=jnp.int32(0))
    step = jax.jit(make_train_step(obj, tx, schedule))
    bad = dict(batch, weights=np.full((2, 4), np.nan, np.float32))
    new, m = step(state, bad)
    assert not bool(m["finite"]) and int(new.skipped) == 1 and int(new.bad_in_a_row) == 1 and int(new.step) == 1
    assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params),
                                                     strict=True))
    good, m2 = step(new, batch)
    assert bool(m2["finite"]) and int(good.bad_in_a_row) == 0 and int(good.skipped) == 1
    assert float(m2["learning_rate"]) == pytest.approx(1e-3)
