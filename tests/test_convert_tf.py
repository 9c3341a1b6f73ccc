"""TF checkpoints in the original releases' names: ours -> TF -> ours is bit-exact in float32 for every family,
the names written are exactly the published spellings (listed here by hand for 1-layer models), the T5 PEGASUS
release layout imports with its switches on, and mismatches are one clear error naming tensor and shape."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import t5pegasus as tp
from t5pegasus.cli import main
from t5pegasus.convert.tf import load_tf, save_tf
from t5pegasus.convert.tf_checkpoint import read_checkpoint, write_checkpoint

tf = pytest.importorskip("tensorflow")

MODELS = {"t5": tp.models.T5, "bert": tp.models.Bert, "gpt": tp.models.GPT}
_SHAPES: dict = {}


def random_params(cfg, seed: int = 0):
    """Random float32 values in every parameter (norms and biases too, so a swap cannot hide); shapes from an
    abstract init, so no model is compiled."""
    if cfg not in _SHAPES:
        x = jnp.ones((1, 4), jnp.int32)
        args = (x, x) if cfg.family == "t5" else (x,)
        init = lambda: tp.models.unbox(MODELS[cfg.family](cfg).init(jax.random.PRNGKey(0), *args)["params"])  # noqa: E731
        _SHAPES[cfg] = jax.eval_shape(init)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), _SHAPES[cfg])


def assert_bit_exact(ours, back):
    la, lb = jax.tree_util.tree_leaves_with_path(ours), jax.tree_util.tree_leaves_with_path(back)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb, strict=True):
        assert y.dtype == jnp.float32, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def written(folder) -> dict[str, tuple[int, ...]]:
    """{name: shape} as TensorFlow lists the checkpoint (independent of our reader)."""
    return {name: tuple(shape) for name, shape in tf.train.list_variables(str(folder))}


# --- the published names, by hand, for 1-layer models -------------------------------------------------------------

def t5_names(norm: str, gated: bool, tied: bool) -> set[str]:
    final = "rms_norm/scale" if norm == "rms_norm" else "final_layer_norm/scale"
    wi = ["wi_0/kernel", "wi_1/kernel"] if gated else ["wi/kernel"]
    enc = ["encoder/block_000/layer_000/SelfAttention/q", "encoder/block_000/layer_000/SelfAttention/k",
           "encoder/block_000/layer_000/SelfAttention/v", "encoder/block_000/layer_000/SelfAttention/o",
           "encoder/block_000/layer_000/SelfAttention/relative_attention_bias",
           f"encoder/block_000/layer_000/{norm}/scale",
           *(f"encoder/block_000/layer_001/DenseReluDense/{w}" for w in wi),
           "encoder/block_000/layer_001/DenseReluDense/wo/kernel", f"encoder/block_000/layer_001/{norm}/scale",
           f"encoder/{final}"]
    dec = ["decoder/block_000/layer_000/SelfAttention/q", "decoder/block_000/layer_000/SelfAttention/k",
           "decoder/block_000/layer_000/SelfAttention/v", "decoder/block_000/layer_000/SelfAttention/o",
           "decoder/block_000/layer_000/SelfAttention/relative_attention_bias",
           f"decoder/block_000/layer_000/{norm}/scale",
           "decoder/block_000/layer_001/EncDecAttention/q", "decoder/block_000/layer_001/EncDecAttention/k",
           "decoder/block_000/layer_001/EncDecAttention/v", "decoder/block_000/layer_001/EncDecAttention/o",
           f"decoder/block_000/layer_001/{norm}/scale",
           *(f"decoder/block_000/layer_002/DenseReluDense/{w}" for w in wi),
           "decoder/block_000/layer_002/DenseReluDense/wo/kernel", f"decoder/block_000/layer_002/{norm}/scale",
           f"decoder/{final}"]
    return {"shared/embedding", *enc, *dec, *([] if tied else ["decoder/logits/kernel"])}


BERT_NAMES = {
    "bert/embeddings/word_embeddings", "bert/embeddings/position_embeddings", "bert/embeddings/token_type_embeddings",
    "bert/embeddings/LayerNorm/gamma", "bert/embeddings/LayerNorm/beta",
    "bert/encoder/layer_0/attention/self/query/kernel", "bert/encoder/layer_0/attention/self/query/bias",
    "bert/encoder/layer_0/attention/self/key/kernel", "bert/encoder/layer_0/attention/self/key/bias",
    "bert/encoder/layer_0/attention/self/value/kernel", "bert/encoder/layer_0/attention/self/value/bias",
    "bert/encoder/layer_0/attention/output/dense/kernel", "bert/encoder/layer_0/attention/output/dense/bias",
    "bert/encoder/layer_0/attention/output/LayerNorm/gamma", "bert/encoder/layer_0/attention/output/LayerNorm/beta",
    "bert/encoder/layer_0/intermediate/dense/kernel", "bert/encoder/layer_0/intermediate/dense/bias",
    "bert/encoder/layer_0/output/dense/kernel", "bert/encoder/layer_0/output/dense/bias",
    "bert/encoder/layer_0/output/LayerNorm/gamma", "bert/encoder/layer_0/output/LayerNorm/beta",
}
BERT_POOLER = {"bert/pooler/dense/kernel", "bert/pooler/dense/bias"}
BERT_MLM = {"cls/predictions/transform/dense/kernel", "cls/predictions/transform/dense/bias",
            "cls/predictions/transform/LayerNorm/gamma", "cls/predictions/transform/LayerNorm/beta",
            "cls/predictions/output_bias"}
BERT_NSP = {"cls/seq_relationship/output_weights", "cls/seq_relationship/output_bias"}

GPT2_NAMES = {
    "model/wte", "model/wpe", "model/h0/ln_1/g", "model/h0/ln_1/b", "model/h0/attn/c_attn/w", "model/h0/attn/c_attn/b",
    "model/h0/attn/c_proj/w", "model/h0/attn/c_proj/b", "model/h0/ln_2/g", "model/h0/ln_2/b", "model/h0/mlp/c_fc/w",
    "model/h0/mlp/c_fc/b", "model/h0/mlp/c_proj/w", "model/h0/mlp/c_proj/b", "model/ln_f/g", "model/ln_f/b",
}

# --- round trips ---------------------------------------------------------------------------------------------------

T5_BASE = dict(vocab_size=96, d_model=16, d_ff=24, num_heads=2, d_kv=8, num_encoder_layers=1, num_decoder_layers=1,
               relative_buckets=8, relative_max_distance=20, dropout_rate=0.0)
PEGASUS = dict(feed_forward="gated-gelu-erf", tie_word_embeddings=False, scale_logits=True, cross_attention_bias=True)
T5_KINDS = {
    "pegasus-rms": ("rms_norm", PEGASUS),
    "pegasus-layer_norm": ("layer_norm", PEGASUS),
    "t5-1.0-tied-layer_norm": ("layer_norm", dict(feed_forward="relu", tie_word_embeddings=True)),
    "mt5-untied-rms": ("rms_norm", dict(feed_forward="gated-gelu", tie_word_embeddings=False)),
    "gated-tied-rms": ("rms_norm", dict(feed_forward="gated-silu", tie_word_embeddings=True)),
}


@pytest.mark.parametrize("kind", list(T5_KINDS))
def test_t5_round_trip_is_bit_exact_with_mesh_tf_names(tmp_path, kind):
    norm, switches = T5_KINDS[kind]
    cfg = tp.T5Config(**T5_BASE, **switches)
    params = random_params(cfg)
    save_tf(cfg, params, tmp_path / "tf", t5_norm=norm)
    names = written(tmp_path / "tf")
    assert set(names) == t5_names(norm, cfg.gated, cfg.tie_word_embeddings)
    # mesh-TF layouts: kernels [in, out], the relative table [heads, buckets], the head [d, vocab].
    assert names["encoder/block_000/layer_000/SelfAttention/q"] == (16, 16)
    assert names["decoder/block_000/layer_000/SelfAttention/relative_attention_bias"] == (2, 8)
    wi = "wi_0" if cfg.gated else "wi"
    assert names[f"decoder/block_000/layer_002/DenseReluDense/{wi}/kernel"] == (16, 24)
    if not cfg.tie_word_embeddings:
        assert names["decoder/logits/kernel"] == (16, 96)
    reader = tf.train.load_checkpoint(str(tmp_path / "tf"))
    np.testing.assert_array_equal(reader.get_tensor("encoder/block_000/layer_000/SelfAttention/relative_attention_bias"),
                                  params["encoder"]["relpos_bias"]["rel_embedding"].T)
    back_cfg, back = load_tf(tmp_path / "tf")
    assert back_cfg == cfg
    assert_bit_exact(params, back)


def test_t5_pegasus_release_layout_imports_with_its_switches(tmp_path):
    """The release: bert4keras `config.json`, no config of ours; norms in either spelling (here layer_norm in the
    blocks, the final norms spelled both ways), plus Adam slots and a step counter that must be ignored."""
    sizes = dict(T5_BASE, vocab_size=50000, d_model=8, d_kv=4, relative_max_distance=128)
    ids = dict(pad_token_id=0, unk_token_id=100, decoder_start_token_id=101, eos_token_id=102)
    cfg = tp.T5Config(**sizes, **PEGASUS, **ids)
    params = random_params(cfg)
    save_tf(cfg, params, tmp_path / "ours", t5_norm="layer_norm")
    release = tmp_path / "chinese_t5_pegasus_small"
    release.mkdir()
    _, tensors = read_checkpoint(tmp_path / "ours")
    tensors["decoder/rms_norm/scale"] = tensors.pop("decoder/final_layer_norm/scale")
    tensors["global_step"] = np.zeros((), np.float32)
    tensors["shared/embedding/adam_m"] = np.zeros((50000, 8), np.float32)
    write_checkpoint(release, tensors)
    (release / "config.json").write_text(json.dumps({
        "hidden_act": ["gelu", "linear"], "hidden_dropout_prob": 0.0, "hidden_size": 8, "initializer_range": 0.02,
        "intermediate_size": 24, "num_attention_heads": 2, "attention_head_size": 4, "num_hidden_layers": 1,
        "vocab_size": 50000, "relative_attention_num_buckets": 8, "attention_scale": False, "is_dropout": True}))
    back_cfg, back = load_tf(release)
    assert back_cfg == cfg
    assert back_cfg.cross_attention_bias and back_cfg.logits_scaled and back_cfg.feed_forward == "gated-gelu-erf"
    assert_bit_exact(params, back)
    # Our export of a T5 PEGASUS model carries the same kind of config.json.
    release_like = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert release_like["hidden_act"] == ["gelu", "linear"] and release_like["num_hidden_layers"] == 1


def test_google_mesh_tf_t5_without_config_is_read_from_shapes(tmp_path):
    cfg = tp.T5Config(**{**T5_BASE, "num_decoder_layers": 2, "relative_max_distance": 128},
                      feed_forward="gated-gelu", tie_word_embeddings=False)
    params = random_params(cfg)
    save_tf(cfg, params, tmp_path / "tf")
    (tmp_path / "tf" / "t5pegasus_config.json").unlink()
    assert not (tmp_path / "tf" / "config.json").exists()  # mT5 is no bert4keras model: no release config
    back_cfg, back = load_tf(tmp_path / "tf")
    assert back_cfg == cfg
    assert_bit_exact(params, back)


@pytest.mark.parametrize("heads", ["pooler+mlm", "mlm"])
def test_bert_round_trip_is_bit_exact_with_google_names(tmp_path, heads):
    cfg = tp.BertConfig.preset("tiny", num_layers=1, vocab_size=96, with_pooler=heads == "pooler+mlm")
    params = random_params(cfg)
    save_tf(cfg, params, tmp_path / "tf")
    names = written(tmp_path / "tf")
    expected = BERT_NAMES | BERT_MLM | (BERT_POOLER | BERT_NSP if cfg.with_pooler else set())
    assert set(names) == expected
    assert names["bert/encoder/layer_0/intermediate/dense/kernel"] == (32, 64)
    assert names["bert/encoder/layer_0/attention/self/query/bias"] == (32,)
    back_cfg, back = load_tf(tmp_path / "tf")
    assert back_cfg == cfg
    assert_bit_exact(params, back)
    # Google's bert_config.json alone (special ids are not in it: the bert-base-chinese ones are assumed).
    assert json.loads((tmp_path / "tf" / "bert_config.json").read_text())["hidden_act"] == "gelu"
    (tmp_path / "tf" / "t5pegasus_config.json").unlink()
    native_cfg, _ = load_tf(tmp_path / "tf")
    assert native_cfg == cfg.replace(unk_token_id=100, cls_token_id=101, sep_token_id=102, mask_token_id=103)


def test_gpt2_round_trip_is_bit_exact_with_openai_names(tmp_path):
    cfg = tp.GPTConfig.preset("tiny", num_layers=1, vocab_size=96)
    params = random_params(cfg)
    save_tf(cfg, params, tmp_path / "tf")
    names = written(tmp_path / "tf")
    assert set(names) == GPT2_NAMES
    assert names["model/h0/attn/c_attn/w"] == (1, 32, 96) and names["model/h0/mlp/c_proj/w"] == (1, 128, 32)
    reader = tf.train.load_checkpoint(str(tmp_path / "tf"))
    att = params["layers_0"]["attention"]
    np.testing.assert_array_equal(reader.get_tensor("model/h0/attn/c_attn/w")[0, :, 32:64],
                                  att["key"]["kernel"].reshape(32, 32))
    back_cfg, back = load_tf(tmp_path / "tf")
    assert back_cfg == cfg
    assert_bit_exact(params, back)
    assert json.loads((tmp_path / "tf" / "hparams.json").read_text()) == {
        "n_vocab": 96, "n_ctx": 64, "n_embd": 32, "n_head": 4, "n_layer": 1}
    (tmp_path / "tf" / "t5pegasus_config.json").unlink()
    native_cfg, _ = load_tf(tmp_path / "tf")
    assert native_cfg == cfg.replace(bos_token_id=95, eos_token_id=95, dropout_rate=0.1)


def test_scanned_params_and_half_precision(tmp_path):
    cfg = tp.GPTConfig.preset("tiny", num_layers=2, vocab_size=96)
    params = random_params(cfg)
    from t5pegasus.models.layers import stack_layers

    save_tf(cfg.replace(scan_layers=True), stack_layers(params), tmp_path / "tf", dtype="bfloat16")
    dtypes = tf.train.load_checkpoint(str(tmp_path / "tf")).get_variable_to_dtype_map()
    assert set(dtypes.values()) == {tf.bfloat16}
    back_cfg, back = load_tf(tmp_path / "tf")
    assert back_cfg.scan_layers and back["layers"]["mlp"]["wi"]["kernel"].shape == (2, 32, 128)
    np.testing.assert_allclose(np.asarray(back["layers"]["mlp"]["wi"]["kernel"][1]),
                               params["layers_1"]["mlp"]["wi"]["kernel"], rtol=1e-2)


# --- errors --------------------------------------------------------------------------------------------------------

def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_shape_mismatch_names_tensor_and_expected_shape(tmp_path):
    cfg = tp.T5Config(**T5_BASE, **PEGASUS)
    params = random_params(cfg)
    save_tf(cfg, params, tmp_path / "tf")
    wrong = cfg.replace(d_ff=20)
    (tmp_path / "tf" / "t5pegasus_config.json").write_text(wrong.to_json())
    with pytest.raises(tp.UserError) as e:
        load_tf(tmp_path / "tf")
    message = one_line(e)
    assert "'encoder/block_000/layer_001/DenseReluDense/wi_0/kernel'" in message
    assert "(16, 24)" in message and "expected (16, 20)" in message
    with pytest.raises(tp.UserError) as e:  # the same mistake on export names our parameter and the TF tensor
        save_tf(wrong, params, tmp_path / "tf2")
    message = one_line(e)
    assert "'encoder/layers_0/mlp/wi_0/kernel'" in message and "expected (16, 20)" in message
    assert "'encoder/block_000/layer_001/DenseReluDense/wi_0/kernel'" in message
    assert not (tmp_path / "tf2").exists()


def test_wrong_family_names_the_expected_tensor(tmp_path):
    t5 = tp.T5Config(**T5_BASE, **PEGASUS)
    save_tf(t5, random_params(t5), tmp_path / "tf")
    bert = tp.BertConfig.preset("tiny", num_layers=1)
    (tmp_path / "tf" / "t5pegasus_config.json").write_text(bert.to_json())
    with pytest.raises(tp.UserError) as e:
        load_tf(tmp_path / "tf")
    message = one_line(e)
    assert "'bert/embeddings/word_embeddings' of shape (128, 32)" in message and "'shared/embedding'" in message
    with pytest.raises(tp.UserError) as e:  # T5 params given with a BERT config
        save_tf(bert, random_params(t5), tmp_path / "tf3")
    message = one_line(e)
    assert "'word_embeddings/embedding'" in message
    assert "'bert/embeddings/word_embeddings' of shape (128, 32)" in message


def test_left_over_tensors_and_missing_tensorflow_are_refused(tmp_path, monkeypatch):
    cfg = tp.GPTConfig.preset("tiny", num_layers=1, vocab_size=96)
    save_tf(cfg, random_params(cfg), tmp_path / "tf")
    _, tensors = read_checkpoint(tmp_path / "tf")
    tensors["model/h1/ln_1/g"] = np.ones(32, np.float32)
    extra = tmp_path / "extra"
    extra.mkdir()
    write_checkpoint(extra, tensors)
    (extra / "t5pegasus_config.json").write_text(cfg.to_json())
    with pytest.raises(tp.UserError, match=r"1 tensor\(s\) were not used, e.g. model/h1/ln_1/g"):
        load_tf(extra)
    with pytest.raises(tp.UserError, match="exists"):
        save_tf(cfg, random_params(cfg), tmp_path / "tf")
    with pytest.raises(tp.UserError, match="is not a file"):  # fails inside the write: nothing is left behind
        save_tf(cfg, random_params(cfg), tmp_path / "partial", extra_files={"vocab.txt": tmp_path / "none.txt"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra", "tf"]
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(tp.UserError, match=r'pip install "t5pegasus\[tf\]"'):
        load_tf(tmp_path / "tf")


# --- CLI -----------------------------------------------------------------------------------------------------------

def test_cli_run_to_tf_to_hf(tmp_path, capsys):
    from tests.test_convert_cli import CFG, make_run

    live, debiased = make_run(tmp_path / "run")
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "tf"), "--to", "tf", "--ema"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert set(written(tmp_path / "tf")) >= {"model/wte", "model/h1/attn/c_attn/w"}
    assert main(["convert", str(tmp_path / "tf"), str(tmp_path / "hf")]) == 0  # detected as tf, written as hf
    cfg, back = tp.convert.load_hf(tmp_path / "hf")
    assert cfg == CFG
    for x, y in zip(jax.tree_util.tree_leaves(debiased), jax.tree_util.tree_leaves(back), strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=0)
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "tf"), "--to", "tf"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "tf"), "--to", "tf", "--force",
                 "--dtype", "float16"]) == 0
    assert set(tf.train.load_checkpoint(str(tmp_path / "tf")).get_variable_to_dtype_map().values()) == {tf.float16}


def test_cli_t5_norm_spelling_and_prefix_source(tmp_path):
    cfg = tp.T5Config(**T5_BASE, feed_forward="gated-gelu", tie_word_embeddings=False)
    params = random_params(cfg)
    save_tf(cfg, params, tmp_path / "rms")
    assert main(["convert", str(tmp_path / "rms" / "model.ckpt"), str(tmp_path / "hf")]) == 0
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "ln"), "--to", "tf", "--t5-norm", "layer_norm"]) == 0
    assert set(written(tmp_path / "ln")) == t5_names("layer_norm", gated=True, tied=False)
    back_cfg, back = load_tf(tmp_path / "ln")
    assert back_cfg == cfg
    assert_bit_exact(params, back)
