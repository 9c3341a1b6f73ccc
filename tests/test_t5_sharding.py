"""On 8 simulated devices (data=2, fsdp=2, tensor=2) the sharded forward equals the single-device one."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import t5pegasus as tp
from t5pegasus.training import mesh as meshlib


@pytest.mark.parametrize("rules_name", ["data", "fsdp", "fsdp_tensor"])
@pytest.mark.parametrize("scan", [False, True])
def test_sharded_forward_equals_single_device(rules_name, scan):
    assert jax.device_count() == 8
    cfg = tp.T5Config.preset("tiny", scan_layers=scan, cross_attention_bias=True)
    model = tp.models.T5(cfg)
    rng = np.random.default_rng(0)
    enc = jnp.asarray(rng.integers(1, cfg.vocab_size, (8, 16)), jnp.int32).at[3, 10:].set(0)
    dec = jnp.asarray(rng.integers(1, cfg.vocab_size, (8, 12)), jnp.int32)

    def init(key):
        return model.init(key, enc, dec)["params"]

    want = model.apply({"params": tp.models.unbox(init(jax.random.key(0)))}, enc, dec)

    mesh = meshlib.make_mesh(2, 2, 2)
    rules = meshlib.rules_for(rules_name)
    shardings = meshlib.logical_shardings(jax.eval_shape(init, jax.random.key(0)), mesh, rules)
    batch = meshlib.batch_sharding(mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        params = jax.jit(init, out_shardings=shardings)(jax.random.key(0))  # born sharded
        forward = jax.jit(lambda p, e, d: model.apply({"params": p}, e, d), in_shardings=(shardings, batch, batch))
        got = forward(params, jax.device_put(enc, batch), jax.device_put(dec, batch))
    # Sharded reductions sum in another order: equal up to float32 rounding.
    assert float(jnp.abs(got - want).max() / jnp.abs(want).max()) < 1e-5

    layer = params["encoder"]["layers" if scan else "layers_0"]["attention"]["query"]["kernel"].value
    embedding = params["shared"]["embedding"].value
    lead = (None,) if scan else ()
    expected = {
        "data": (P(*lead, None, None, None), P(None, None)),
        "fsdp": (P(*lead, "fsdp", None, None), P(None, "fsdp")),
        "fsdp_tensor": (P(*lead, "fsdp", "tensor", None), P("tensor", "fsdp")),
    }[rules_name]
    assert layer.sharding.spec == expected[0]
    assert embedding.sharding.spec == expected[1]
    if rules_name == "fsdp_tensor":  # each device really holds a quarter of the query kernel
        shard = layer.addressable_shards[0].data
        assert shard.size * 4 == layer.size


# the logical names every rules preset maps: a parameter named otherwise would be replicated by all of them
RULED_AXES = set.intersection(*({name for name, _ in rules} for rules in meshlib.RULES.values())) | {None}


@pytest.mark.parametrize("family", ["t5", "t5-scan", "bert", "gpt"])
def test_every_parameter_has_logical_axis_names(family):
    """No parameter can silently end up replicated: each one is boxed with one logical name per dimension."""
    enc = jnp.ones((2, 8), jnp.int32)
    if family.startswith("t5"):
        cfg = tp.T5Config.preset("tiny", scan_layers=family == "t5-scan", cross_attention_bias=True)
        model, args = tp.models.T5(cfg), (enc, enc)
    elif family == "bert":
        model, args = tp.models.Bert(tp.BertConfig.preset("tiny")), (enc,)
    else:
        model, args = tp.models.GPT(tp.GPTConfig.preset("tiny")), (enc,)
    boxed = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves
    for leaf in leaves:
        assert isinstance(leaf, nn.Partitioned), leaf
        assert len(leaf.names) == leaf.value.ndim
        assert set(leaf.names) <= RULED_AXES, leaf.names
