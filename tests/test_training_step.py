"""Train step: sharded (8 simulated devices, each rule preset) equals one device; accumulation over k equals
one k-times batch; a non-finite loss skips the update."""

import flax.linen as nn
import jax
import numpy as np
import pytest

import t5pegasus as tp
from t5pegasus.training import mesh as meshlib
from t5pegasus.training.objectives import make_objective
from t5pegasus.training.optim import OptimConfig, make_optimizer
from t5pegasus.training.state import init_state, state_shardings
from t5pegasus.training.step import jit_train_step, make_train_step

LENGTHS = {"source": 12, "target": 8}


def batches(n, batch_size=8, vocab=128, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        enc = rng.integers(1, vocab, (batch_size, LENGTHS["source"])).astype(np.int32)
        enc_mask = np.ones_like(enc)
        enc_mask[::3, 9:] = 0
        enc = enc * enc_mask
        tgt = rng.integers(1, vocab, (batch_size, LENGTHS["target"] + 1)).astype(np.int32)
        w = np.ones((batch_size, LENGTHS["target"]), np.int32)
        w[1::2, 5:] = 0  # uneven target lengths: the weighting must be per token, not per micro-batch
        out.append({"encoder_ids": enc, "encoder_mask": enc_mask, "decoder_ids": tgt[:, :-1] * w,
                    "targets": tgt[:, 1:] * w, "weights": w})
    return out


def train(data, *, mesh_shape=(1, 1, 1), rules="data", accumulate=1, optim=None, ema=0.0, scan=False,
          dtype="float32"):
    cfg = tp.T5Config.preset("tiny", scan_layers=scan, dtype=dtype)
    obj = make_objective("seq2seq", cfg)
    ocfg = optim or OptimConfig(learning_rate=3e-3, points={2: 1.0}, accumulate=accumulate, ema=ema)
    tx, schedule = make_optimizer(ocfg)
    n = int(np.prod(mesh_shape))
    mesh = meshlib.make_mesh(*mesh_shape, devices=jax.devices()[:n])
    rules_t = meshlib.rules_for(rules)
    dummy = obj.dummy_batch(2, LENGTHS)
    init = lambda k: obj.init(k, dummy)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules_t):
        _, shardings = state_shardings(init, tx, ema, mesh, rules_t)
        state = init_state(init, tx, ema, 0, shardings)
        bsh = meshlib.batch_sharding(mesh, rules_t)
        step = jit_train_step(make_train_step(obj, tx, schedule, accumulate=accumulate, ema_momentum=ema),
                              shardings, bsh)
        metrics = []
        for b in data:
            state, m = step(state, jax.device_put(b, bsh))
            metrics.append(jax.device_get(m))
    return jax.device_get(state), metrics, shardings


def max_rel(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return max(float(np.abs(x - y).max() / (np.abs(y).max() + 1e-12)) for x, y in zip(la, lb, strict=True))


@pytest.fixture(scope="module")
def reference():
    return train(batches(4))


@pytest.mark.parametrize("rules", ["data", "fsdp", "fsdp_tensor"])
def test_sharded_training_equals_single_device(reference, rules):
    shape = {"data": (8, 1, 1), "fsdp": (2, 4, 1), "fsdp_tensor": (2, 2, 2)}[rules]
    state, metrics, shardings = train(batches(4), mesh_shape=shape, rules=rules)
    ref_state, ref_metrics, _ = reference
    assert int(state.step) == 4
    assert max_rel(state.params, ref_state.params) < 1e-5
    assert max_rel(state.opt_state, ref_state.opt_state) < 1e-4
    for m, r in zip(metrics, ref_metrics, strict=True):
        assert abs(m["loss"] - r["loss"]) < 1e-5 * abs(r["loss"])
    # the parameters really are split across devices (not only correct)
    q = shardings.params["encoder"]["layers_0"]["attention"]["query"]["kernel"].spec
    assert tuple(q) == {"data": (None, None, None), "fsdp": ("fsdp", None, None),
                 "fsdp_tensor": ("fsdp", "tensor", None)}[rules]
    # Adam moments follow their parameters
    mu = shardings.opt_state[1][0].mu["encoder"]["layers_0"]["attention"]["query"]["kernel"].spec
    assert tuple(mu) == tuple(q)


def test_metrics(reference):
    _, metrics, _ = reference
    assert all(m["finite"] for m in metrics)
    assert metrics[0]["learning_rate"] == 0.0 and metrics[1]["learning_rate"] == pytest.approx(1.5e-3)
    assert metrics[0]["tokens"] == 8 * 8 - 4 * 3
    assert 0 <= metrics[0]["accuracy"] <= 1 and metrics[0]["grad_norm"] > 0


def test_accumulation_equals_k_times_batch():
    k = 4
    data = batches(2, batch_size=8)
    big, big_m, _ = train(data, mesh_shape=(2, 1, 1))
    acc, acc_m, _ = train(data, accumulate=k, mesh_shape=(2, 1, 1))
    assert max_rel(acc.params, big.params) < 1e-5
    assert max_rel(acc.opt_state, big.opt_state) < 1e-4
    for a, b in zip(acc_m, big_m, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)


def test_bfloat16_compute_keeps_float32_weights_and_follows_the_float32_run(reference):
    """train.dtype=bfloat16: matmuls in bfloat16, weights and moments stay float32, losses track float32's."""
    state, metrics, _ = train(batches(4), mesh_shape=(2, 2, 2), rules="fsdp_tensor", dtype="bfloat16")
    ref_state, ref_metrics, _ = reference
    leaves = jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state[1][0].mu)
    assert all(x.dtype == np.float32 for x in leaves)
    assert all(m["finite"] for m in metrics)
    for m, r in zip(metrics, ref_metrics, strict=True):
        assert abs(m["loss"] - r["loss"]) < 2e-2 * abs(r["loss"])
    assert 0 < max_rel(state.params, ref_state.params) < 5e-2  # really computed in another precision
