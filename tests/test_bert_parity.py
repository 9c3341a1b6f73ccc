"""BERT hidden states, pooled output and MLM logits equal HF transformers (random weights, float32, offline)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import t5pegasus as tp
from t5pegasus.convert import bert_hf
from t5pegasus.convert.checkpoint_files import read_state_dict


def small_bert(kind: str, folder, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random HF `BertModel` ("model") or `BertForMaskedLM` ("mlm") saved to `folder`."""
    torch.manual_seed(seed)
    config = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=40, type_vocab_size=2, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    config.update(overrides)
    cls = transformers.BertModel if kind == "model" else transformers.BertForMaskedLM
    model = cls(transformers.BertConfig(**config))
    with torch.no_grad():  # HF initialises LayerNorms to 1/0 and biases to 0: make them informative
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    model.save_pretrained(folder)
    return model


def _batch(vocab: int):
    rng = np.random.default_rng(0)
    ids = rng.integers(5, vocab, (3, 20))
    ids[1, 13:] = 0
    ids[2, 4:] = 0
    seg = np.zeros_like(ids)
    seg[0, 8:] = 1
    seg[1, 6:13] = 1
    return ids, seg, (ids != 0).astype(np.int64)


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("kind", ["model", "mlm"])
def test_bert_matches_hf(tmp_path, kind):
    hf = small_bert(kind, tmp_path)
    # transformers 5 ties the MLM decoder to the word embeddings at construction and does not save it.
    if kind == "mlm":
        assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight
    cfg, params = tp.convert.load_hf(tmp_path)
    assert isinstance(cfg, tp.BertConfig) and cfg.hidden_act == "gelu-erf"
    assert (cfg.with_pooler, cfg.with_mlm) == ((True, False) if kind == "model" else (False, True))
    ids, seg, mask = _batch(cfg.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(seg), attention_mask=torch.tensor(mask),
                 output_hidden_states=True)
    out = tp.models.Bert(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(seg, jnp.int32))
    real = mask.astype(bool)  # padded positions are not defined by either implementation
    if kind == "model":
        assert rel_err(np.asarray(out.hidden)[real], ref.last_hidden_state.numpy()[real]) < 1e-4
        assert rel_err(out.pooled, ref.pooler_output.numpy()) < 1e-4
        assert out.logits is None
    else:
        assert rel_err(np.asarray(out.hidden)[real], ref.hidden_states[-1].numpy()[real]) < 1e-4
        assert out.logits.shape == (3, 20, cfg.vocab_size) and out.logits.dtype == jnp.float32
        assert rel_err(np.asarray(out.logits)[real], ref.logits.numpy()[real]) < 1e-4
        assert out.pooled is None


def test_params_to_hf_round_trip(tmp_path):
    small_bert("mlm", tmp_path, seed=1)
    cfg, params = tp.convert.load_hf(tmp_path)
    back = bert_hf.params_to_hf(cfg, params)
    original = read_state_dict(tmp_path)
    assert set(back) == set(original)
    for name, value in original.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    hf_cfg = transformers.BertConfig(**bert_hf.config_to_hf(cfg))
    assert (hf_cfg.hidden_act, hf_cfg.intermediate_size, hf_cfg.layer_norm_eps) == ("gelu", 48, 1e-12)


def test_unprefixed_pretraining_checkpoint_with_gamma_beta(tmp_path):
    """An old-style checkpoint: LayerNorm gamma/beta, explicit decoder weight and a next-sentence head."""
    from safetensors.numpy import load_file, save_file

    small_bert("mlm", tmp_path, seed=2)
    cfg, want = tp.convert.load_hf(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in tensors.items()}
    renamed["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
    renamed["cls.seq_relationship.weight"] = np.ones((2, 32), np.float32)
    renamed["cls.seq_relationship.bias"] = np.zeros((2,), np.float32)
    save_file(renamed, tmp_path / "model.safetensors")
    _, got = tp.convert.load_hf(tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want),
                                                    strict=True))
    # An untied decoder is refused with its name.
    renamed["cls.predictions.decoder.weight"] = renamed["cls.predictions.decoder.weight"] + 1
    save_file(renamed, tmp_path / "model.safetensors")
    with pytest.raises(tp.UserError, match=r"cls\.predictions\.decoder\.weight"):
        tp.convert.load_hf(tmp_path)


def test_scanned_bert_equals_unrolled(tmp_path):
    small_bert("mlm", tmp_path, seed=3)
    cfg, params = tp.convert.load_hf(tmp_path)
    ids, seg, _ = _batch(cfg.vocab_size)
    ids, seg = jnp.asarray(ids, jnp.int32), jnp.asarray(seg, jnp.int32)
    want = tp.models.Bert(cfg).apply({"params": params}, ids, seg)
    for flags in (dict(scan_layers=True), dict(scan_layers=True, remat=True)):
        got = tp.models.Bert(cfg.replace(**flags)).apply({"params": tp.models.stack_layers(params)}, ids, seg)
        np.testing.assert_allclose(np.asarray(got.logits), np.asarray(want.logits), rtol=1e-5, atol=1e-5)
