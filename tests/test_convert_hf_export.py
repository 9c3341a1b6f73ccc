"""save_hf for every family: HF transformers loads the folder with no missing or unexpected keys, its logits equal
ours (float32, 1e-4 relative), and load_hf brings back the same config and bit-identical params."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import t5pegasus as tp

T5_KINDS = {
    # T5 1.0: relu, tied head, decoder output rescaled (HF model_type t5).
    "t5": dict(feed_forward="relu", tie_word_embeddings=True),
    # mT5 / T5 v1.1: gated tanh GELU, untied, unscaled.
    "mt5": dict(feed_forward="gated-gelu", tie_word_embeddings=False),
    # T5 PEGASUS without cross-attention bias: erf GELU, untied but scaled (scale folded into the exported head).
    "t5-pegasus-exact": dict(feed_forward="gated-gelu-erf", tie_word_embeddings=False, scale_logits=True,
                             decoder_start_token_id=101, eos_token_id=102, unk_token_id=100),
}


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def informative(params, seed: int):
    """Random values everywhere (init leaves norms at 1 and biases at 0, which would hide a swap), at the
    init's scale so float32 stays well-conditioned."""
    rng = np.random.default_rng(seed)

    def noisy(x):
        x = np.asarray(x)
        return jnp.asarray(x + rng.normal(size=x.shape) * (0.3 if x.ndim == 1 else 0.5 * x.std()), x.dtype)

    return jax.tree.map(noisy, params)


def assert_same_tree(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb, strict=True):
        assert x.dtype == y.dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def hf_load(cls, folder):
    model, info = cls.from_pretrained(folder, output_loading_info=True)
    missing = [k for k in info["missing_keys"]]
    assert not missing and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def t5_model(kind: str, seed: int = 0, **extra):
    values = dict(vocab_size=120, relative_buckets=8, relative_max_distance=20, num_decoder_layers=3)
    cfg = tp.T5Config.preset("tiny", **{**values, **T5_KINDS[kind], **extra})
    enc = jnp.ones((1, 6), jnp.int32)
    params = tp.models.T5(cfg).init(jax.random.PRNGKey(seed), enc, enc)["params"]
    return cfg, informative(tp.models.unbox(params), seed + 1)


def t5_batch():
    rng = np.random.default_rng(0)
    enc = rng.integers(3, 120, (2, 11))
    enc[1, 7:] = 0
    dec = rng.integers(3, 120, (2, 9))
    return enc, dec


@pytest.mark.parametrize("kind", list(T5_KINDS))
def test_t5_export_loads_in_hf_with_equal_logits_and_round_trips(tmp_path, kind):
    cfg, params = t5_model(kind)
    tp.convert.save_hf(cfg, params, tmp_path / "hf")
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_cfg["model_type"] == ("t5" if kind == "t5" else "mt5")
    hf = hf_load(transformers.AutoModelForSeq2SeqLM, tmp_path / "hf")
    enc, dec = t5_batch()
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != 0),
                 decoder_input_ids=torch.tensor(dec)).logits.numpy()
    ours = tp.models.T5(cfg).apply({"params": params}, jnp.asarray(enc, jnp.int32), jnp.asarray(dec, jnp.int32))
    assert rel_err(ours, ref) < 1e-4
    back_cfg, back = tp.convert.load_hf(tmp_path / "hf")
    assert back_cfg == cfg
    assert_same_tree(back, params)
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert (generation["decoder_start_token_id"], generation["eos_token_id"]) == (
        cfg.decoder_start_token_id, cfg.eos_token_id)


def bert_model(seed: int = 0, **overrides):
    cfg = tp.BertConfig.preset("tiny", vocab_size=110, **overrides)
    ids = jnp.ones((1, 6), jnp.int32)
    params = tp.models.Bert(cfg).init(jax.random.PRNGKey(seed), ids, ids * 0)["params"]
    return cfg, informative(tp.models.unbox(params), seed + 1)


@pytest.mark.parametrize("heads", [dict(with_pooler=True, with_mlm=False), dict(with_pooler=False, with_mlm=True),
                                   dict(attention="unilm")])
def test_bert_export_loads_in_hf_with_equal_outputs_and_round_trips(tmp_path, heads):
    cfg, params = bert_model(**heads)
    tp.convert.save_hf(cfg, params, tmp_path / "hf")
    arch = json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"][0]
    hf = hf_load(getattr(transformers, arch), tmp_path / "hf")
    rng = np.random.default_rng(1)
    ids = rng.integers(5, cfg.vocab_size, (2, 14))
    ids[1, 9:] = 0
    seg = np.zeros_like(ids)
    seg[:, 6:] = 1
    seg[1, 9:] = 0
    mask = ids != 0
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(seg),
                 attention_mask=torch.tensor(mask.astype(np.int64)), output_hidden_states=True)
    bidirectional = cfg.replace(attention="bidirectional")  # HF has no UniLM mask: compare the same weights
    out = tp.models.Bert(bidirectional).apply({"params": params}, jnp.asarray(ids, jnp.int32),
                                              jnp.asarray(seg, jnp.int32))
    assert rel_err(np.asarray(out.hidden)[mask], ref.hidden_states[-1].numpy()[mask]) < 1e-4
    if cfg.with_mlm:
        logits = ref.logits if arch == "BertForMaskedLM" else ref.prediction_logits
        assert rel_err(np.asarray(out.logits)[mask], logits.numpy()[mask]) < 1e-4
    if arch == "BertModel":
        assert rel_err(out.pooled, ref.pooler_output.numpy()) < 1e-4
    back_cfg, back = tp.convert.load_hf(tmp_path / "hf")
    assert back_cfg == cfg  # the UniLM attention mode travels in our config key
    assert_same_tree(back, params)


def test_gpt_export_loads_in_hf_with_equal_logits_and_round_trips(tmp_path):
    cfg = tp.GPTConfig.preset("tiny", vocab_size=100, bos_token_id=2, eos_token_id=3)
    ids = jnp.ones((1, 6), jnp.int32)
    params = informative(tp.models.unbox(tp.models.GPT(cfg).init(jax.random.PRNGKey(0), ids)["params"]), 1)
    tp.convert.save_hf(cfg, params, tmp_path / "hf")
    hf = hf_load(transformers.AutoModelForCausalLM, tmp_path / "hf")
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 17))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
    ours = tp.models.GPT(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32))
    assert rel_err(ours, ref) < 1e-4
    back_cfg, back = tp.convert.load_hf(tmp_path / "hf")
    assert back_cfg == cfg
    assert_same_tree(back, params)


def test_scanned_params_and_half_precision_export(tmp_path):
    cfg = tp.GPTConfig.preset("tiny", vocab_size=100, scan_layers=True)
    ids = jnp.ones((1, 6), jnp.int32)
    params = tp.models.GPT(cfg).init(jax.random.PRNGKey(0), ids)["params"]
    tp.convert.save_hf(cfg, params, tmp_path / "bf16", dtype="bfloat16")
    hf = hf_load(transformers.AutoModelForCausalLM, tmp_path / "bf16")
    assert hf.transformer.wte.weight.dtype == torch.bfloat16
    back_cfg, back = tp.convert.load_hf(tmp_path / "bf16")
    assert back_cfg.scan_layers
    want = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), tp.models.unbox(params))
    assert_same_tree(back, want)


def test_export_is_atomic_and_never_overwrites(tmp_path):
    cfg, params = t5_model("mt5")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(tp.UserError, match="exists"):
        tp.convert.save_hf(cfg, params, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["keep.txt"]
    # A failure while writing leaves no folder and no temporary behind.
    with pytest.raises(tp.UserError, match="missing.model"):
        tp.convert.save_hf(cfg, params, tmp_path / "new", extra_files={"spiece.model": tmp_path / "missing.model"})
    assert sorted(os.listdir(tmp_path)) == ["out"]
    tp.convert.save_hf(cfg, params, tmp_path / "out", overwrite=True)
    assert "keep.txt" not in os.listdir(tmp_path / "out") and sorted(os.listdir(tmp_path)) == ["out"]


def test_wordpiece_vocab_travels_and_hf_tokenizer_uses_its_special_ids(tmp_path):
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += ["中", "国", "人", "hello"] + [f"x{i}" for i in range(12)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    cfg, params = t5_model("t5-pegasus-exact", vocab_size=len(vocab), num_decoder_layers=2)
    tp.convert.save_hf(cfg, params, tmp_path / "hf", extra_files={"vocab.txt": tmp_path / "vocab.txt"})
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.unk_token_id) == (101, 102, 0, 100)
    assert tok("中国人 hello")["input_ids"] == [101, 104, 105, 106, 107, 102]
    hf = hf_load(transformers.AutoModelForSeq2SeqLM, tmp_path / "hf")
    assert (hf.generation_config.decoder_start_token_id, hf.generation_config.eos_token_id) == (101, 102)
    out = hf.generate(torch.tensor([[101, 104, 105, 102]]), max_new_tokens=4, do_sample=False)
    assert out[0, 0].item() == 101  # generation starts from [CLS]


def test_unknown_family_and_mismatched_tensor_are_named(tmp_path):
    cfg, params = t5_model("mt5")
    tp.convert.save_hf(cfg, params, tmp_path / "hf")
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    hf_cfg["d_ff"] = 65  # the tensors no longer fit the config
    hf_cfg.pop("t5pegasus_config")
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_cfg))
    with pytest.raises(tp.UserError, match=r"DenseReluDense.wi_0.weight' has shape \(64, 32\), expected \(65, 32\)"):
        tp.convert.load_hf(tmp_path / "hf")
    hf_cfg["model_type"] = "llama"
    (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_cfg))
    with pytest.raises(tp.UserError, match="model_type 'llama' is not supported; known: bert, gpt2, mt5, t5"):
        tp.convert.load_hf(tmp_path / "hf")


def test_sentencepiece_model_travels_and_hf_tokenizer_gives_our_ids(tmp_path):
    """An mT5-style export ships spiece.model; HF's T5 tokenizer built from it encodes as our tokenizer does."""
    import itertools

    from t5pegasus.pretrain.corpora import peoples_daily_paragraphs
    from t5pegasus.text import SentencePieceTokenizer, train_sentencepiece

    paragraphs = list(itertools.islice(peoples_daily_paragraphs(), 600))
    train_sentencepiece(paragraphs[:500], tmp_path / "m.model", 2000, character_coverage=0.98)
    ours = SentencePieceTokenizer(tmp_path / "m.model")
    cfg, params = t5_model("mt5", vocab_size=ours.vocab_size)
    tp.convert.save_hf(cfg, params, tmp_path / "hf", extra_files={"spiece.model": tmp_path / "m.model"})
    assert (tmp_path / "hf" / "spiece.model").read_bytes() == (tmp_path / "m.model").read_bytes()
    tok = transformers.T5Tokenizer.from_pretrained(tmp_path / "hf")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (ours.pad_id, ours.eos_id, ours.unk_id)
    for text in paragraphs[500:520]:
        assert tok(text)["input_ids"] == ours.add_special(ours.encode(text))
