"""T5Config presets, validation, JSON round trips and parameter counts."""

import jax
import jax.numpy as jnp
import pytest

import t5pegasus as tp
from t5pegasus.errors import UserError
from t5pegasus.models.layers import count_params


def analytic_t5_params(c: tp.T5Config) -> int:
    d, inner = c.d_model, c.num_heads * c.d_kv
    attn = 4 * d * inner
    mlp = (3 if c.gated else 2) * d * c.d_ff
    enc_layer = attn + mlp + 2 * d
    dec_layer = 2 * attn + mlp + 3 * d
    total = c.vocab_size * d + c.num_encoder_layers * enc_layer + c.num_decoder_layers * dec_layer
    total += 2 * d + 2 * c.relative_buckets * c.num_heads  # final norms and the two bias tables
    if not c.tie_word_embeddings:
        total += c.vocab_size * d
    return total


@pytest.mark.parametrize("name", tp.T5Config.presets())
def test_preset_param_count_matches_formula(name):
    cfg = tp.T5Config.preset(name)
    model = tp.models.T5(cfg)
    ids = jnp.zeros((1, 4), jnp.int32)
    shapes = jax.eval_shape(lambda k: model.init(k, ids, ids)["params"], jax.random.key(0))
    assert count_params(shapes) == analytic_t5_params(cfg)


def test_t5_pegasus_sizes():
    small = analytic_t5_params(tp.T5Config.preset("t5-pegasus-small"))
    base = analytic_t5_params(tp.T5Config.preset("t5-pegasus-base"))
    assert 94e6 < small < 96e6, small
    assert 270e6 < base < 280e6, base


def test_unknown_preset_lists_choices():
    with pytest.raises(UserError, match="t5-pegasus-small") as e:
        tp.T5Config.preset("t5-pegasus-smal")
    assert "did you mean" in str(e.value)


def test_unknown_field_is_named():
    with pytest.raises(UserError, match="d_modle"):
        tp.T5Config.preset("tiny", d_modle=3)
    with pytest.raises(UserError, match="feed_forward"):
        tp.T5Config.preset("tiny", feed_forward="swiglu")


def test_json_round_trip(tmp_path):
    cfg = tp.T5Config.preset("t5-pegasus-small", scan_layers=True)
    cfg.save(tmp_path / "c.json")
    assert tp.T5Config.load(tmp_path / "c.json") == cfg
    assert tp.load_config(tmp_path / "c.json") == cfg


def test_bad_json_is_user_error(tmp_path):
    (tmp_path / "c.json").write_text("{nope")
    with pytest.raises(UserError, match="not valid JSON"):
        tp.load_config(tmp_path / "c.json")
    with pytest.raises(UserError, match="does not exist"):
        tp.load_config(tmp_path / "missing.json")
