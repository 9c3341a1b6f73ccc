"""On 8 simulated devices (data=2, fsdp=2, tensor=2) sharded BERT/UniLM and GPT equal the single-device run."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import t5pegasus as tp
from t5pegasus.training import mesh as meshlib


def _family(name: str, scan: bool):
    rng = np.random.default_rng(0)
    if name == "bert":
        cfg = tp.BertConfig.preset("tiny", attention="unilm", scan_layers=scan, conditional_layer_norm=True,
                                   condition_size=4)
        ids = jnp.asarray(rng.integers(5, cfg.vocab_size, (8, 16)), jnp.int32).at[3, 12:].set(0)
        seg = jnp.zeros((8, 16), jnp.int32).at[:, 9:].set(1)
        model = tp.models.Bert(cfg)
        return model, (ids, seg), lambda out: jnp.concatenate([out.logits.reshape(-1), out.pooled.reshape(-1)])
    cfg = tp.GPTConfig.preset("tiny", scan_layers=scan)
    ids = jnp.asarray(rng.integers(2, cfg.vocab_size, (8, 16)), jnp.int32)
    return tp.models.GPT(cfg), (ids,), lambda out: out.reshape(-1)


@pytest.mark.parametrize("family", ["bert", "gpt"])
@pytest.mark.parametrize("rules_name", ["data", "fsdp", "fsdp_tensor"])
def test_sharded_forward_equals_single_device(family, rules_name):
    assert jax.device_count() == 8
    scan = rules_name == "fsdp_tensor"  # scanned layers once per family; the layout rules all three times
    model, inputs, flat = _family(family, scan)

    def init(key):
        return model.init(key, *inputs)["params"]

    def forward(p, *xs):
        return flat(model.apply({"params": p}, *xs))

    want = jax.jit(forward)(tp.models.unbox(jax.jit(init)(jax.random.key(0))), *inputs)
    mesh = meshlib.make_mesh(2, 2, 2)
    rules = meshlib.rules_for(rules_name)
    shardings = meshlib.logical_shardings(jax.eval_shape(init, jax.random.key(0)), mesh, rules)
    batch = meshlib.batch_sharding(mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        params = jax.jit(init, out_shardings=shardings)(jax.random.key(0))  # born sharded
        got = jax.jit(forward, in_shardings=(shardings,) + (batch,) * len(inputs))(
            params, *(jax.device_put(x, batch) for x in inputs))
    assert float(jnp.abs(got - want).max() / jnp.abs(want).max()) < 1e-5

    table = params["word_embeddings" if family == "bert" else "token_embeddings"]["embedding"].value
    layer = params["layers" if scan else "layers_0"]["attention"]["query"]["kernel"].value
    lead = (None,) if scan else ()
    expected = {"data": (P(None, None), P(*lead, None, None, None)),
                "fsdp": (P(None, "fsdp"), P(*lead, "fsdp", None, None)),
                "fsdp_tensor": (P("tensor", "fsdp"), P(*lead, "fsdp", "tensor", None))}[rules_name]
    assert (table.sharding.spec, layer.sharding.spec) == expected
