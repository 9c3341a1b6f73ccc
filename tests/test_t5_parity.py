"""T5 / mT5 logits and encoder states equal HF transformers (random weights, float32, offline)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import t5pegasus as tp
from tests.hf_reference import small_t5


def _batch(vocab: int, pad: bool):
    rng = np.random.default_rng(0)
    enc = rng.integers(2, vocab, (3, 30))
    dec = rng.integers(2, vocab, (3, 25))
    if pad:
        enc[1, 18:] = 0
        enc[2, 5:] = 0
    return enc, dec, (enc != 0).astype(np.int64)


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("kind", ["t5", "mt5"])
@pytest.mark.parametrize("pad", [False, True])
def test_logits_and_encoder_match_hf(tmp_path, kind, pad):
    hf = small_t5(kind, tmp_path)
    cfg, params = tp.convert.load_hf(tmp_path)
    assert cfg.feed_forward == ("relu" if kind == "t5" else "gated-gelu")
    assert cfg.tie_word_embeddings == (kind == "t5") and cfg.logits_scaled == (kind == "t5")
    enc, dec, mask = _batch(cfg.vocab_size, pad)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(enc), attention_mask=torch.tensor(mask), decoder_input_ids=torch.tensor(dec))
    model = tp.models.T5(cfg)
    logits = model.apply({"params": params}, jnp.asarray(enc, jnp.int32), jnp.asarray(dec, jnp.int32))
    assert logits.shape == (3, 25, cfg.vocab_size)
    assert rel_err(logits, ref.logits.numpy()) < 1e-4
    encoded = np.asarray(model.apply({"params": params}, jnp.asarray(enc, jnp.int32), method=tp.models.T5.encode))
    real = mask.astype(bool)  # padded positions' states are not defined by either implementation
    assert rel_err(encoded[real], ref.encoder_last_hidden_state.numpy()[real]) < 1e-4


def test_scanned_load_matches(tmp_path):
    small_t5("mt5", tmp_path)
    cfg, params = tp.convert.load_hf(tmp_path)
    enc, dec, _ = _batch(cfg.vocab_size, True)
    e, d = jnp.asarray(enc, jnp.int32), jnp.asarray(dec, jnp.int32)
    want = tp.models.T5(cfg).apply({"params": params}, e, d)
    scanned_cfg = cfg.replace(scan_layers=True)
    got = tp.models.T5(scanned_cfg).apply({"params": tp.models.stack_layers(params)}, e, d)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    back = tp.models.unstack_layers(tp.models.stack_layers(params))
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(back),
                                                    jax.tree_util.tree_leaves(params), strict=True))


def test_missing_tensor_is_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    small_t5("mt5", tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["encoder.block.1.layer.1.DenseReluDense.wo.weight"] = np.zeros((3, 3), np.float32)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(tp.UserError, match=r"encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight.*\(32, 48\)"):
        tp.convert.load_hf(tmp_path)


def test_pytorch_model_bin_folder_matches_hf(tmp_path):
    """A folder with pytorch_model.bin (the older HF layout, tied weights stored once) loads to the same model."""
    hf = small_t5("t5", tmp_path / "st")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    state = {k: v for k, v in hf.state_dict().items() if k not in ("encoder.embed_tokens.weight",
                                                                    "decoder.embed_tokens.weight", "lm_head.weight")}
    torch.save(state, bin_dir / "pytorch_model.bin")
    cfg, params = tp.convert.load_hf(bin_dir)
    enc, dec, mask = _batch(cfg.vocab_size, True)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(enc), attention_mask=torch.tensor(mask), decoder_input_ids=torch.tensor(dec))
    logits = tp.models.T5(cfg).apply({"params": params}, jnp.asarray(enc, jnp.int32), jnp.asarray(dec, jnp.int32))
    assert rel_err(logits, ref.logits.numpy()) < 1e-4
