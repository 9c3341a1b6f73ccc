"""The T5 PEGASUS HF export with remote code: `trust_remote_code=True` loads a model whose logits, greedy and beam
generations (cached) equal ours, and a tokenizer whose ids (and decoded text) equal ours; without remote code the
same folder loads as HF's plain MT5 / BertTokenizer, and the MT5's logit difference is the one the export
reported."""

import itertools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import t5pegasus as tp
from t5pegasus.convert.hf_export import REMOTE_CODE
from t5pegasus.convert.t5_hf import probe_batch
from tests.test_convert_hf_export import assert_same_tree, hf_load, informative, rel_err, t5_batch

CLS, SEP, PAD = 101, 102, 0
# T5 PEGASUS as bert4keras builds it: cross-attention bias, scaled logits, erf GELU, untied head, [CLS]/[SEP].
PEGASUS = dict(feed_forward="gated-gelu-erf", tie_word_embeddings=False, scale_logits=True, cross_attention_bias=True,
               decoder_start_token_id=CLS, eos_token_id=SEP, unk_token_id=100, relative_buckets=8,
               relative_max_distance=20)


def pegasus_model(seed: int = 0, **extra):
    cfg = tp.T5Config.preset("tiny", **{"vocab_size": 120, **PEGASUS, **extra})
    ids = jnp.ones((1, 6), jnp.int32)
    params = tp.models.T5(cfg).init(jax.random.PRNGKey(seed), ids, ids)["params"]
    return cfg, informative(tp.models.unbox(params), seed + 1)


def remote_load(folder):
    model, info = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True,
                                                                     output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert type(model).__name__ == "T5PegasusForConditionalGeneration"
    return model.eval()


def hf_logits(model, enc, dec):
    with torch.no_grad():
        return model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != PAD),
                     decoder_input_ids=torch.tensor(dec)).logits.numpy()


def our_logits(cfg, params, enc, dec):
    return np.asarray(tp.models.T5(cfg).apply({"params": params}, jnp.asarray(enc, jnp.int32),
                                              jnp.asarray(dec, jnp.int32)))


@pytest.mark.parametrize("tied", [False, True])  # tied: still MT5 (the head, scaled, is written untied)
def test_export_needs_no_allow_lossy_and_remote_code_computes_our_logits(tmp_path, tied):
    cfg, params = pegasus_model(seed=4, num_decoder_layers=3, tie_word_embeddings=tied)
    said = []
    tp.convert.save_hf(cfg, params, tmp_path / "hf", report=said.append)
    folder = tmp_path / "hf"
    assert (folder / "modeling_t5pegasus.py").read_bytes() == (REMOTE_CODE / "modeling_t5pegasus.py").read_bytes()
    hf_cfg = json.loads((folder / "config.json").read_text())
    assert hf_cfg["model_type"] == "mt5" and hf_cfg["cross_attention_bias"] is True
    assert hf_cfg["auto_map"] == {"AutoModelForSeq2SeqLM": "modeling_t5pegasus.T5PegasusForConditionalGeneration"}
    assert len(said) == 1 and "trust_remote_code=True" in said[0] and "changes logits by up to" in said[0]
    reported = float(said[0].split("up to ")[1].split()[0])

    hf = remote_load(folder)
    enc, dec = t5_batch()  # padded source
    long_enc, long_dec = probe_batch(cfg)  # distances past relative_max_distance: the log buckets
    for e, d in ((enc, dec), (long_enc, long_dec)):
        assert rel_err(our_logits(cfg, params, e, d), hf_logits(hf, e, d)) < 1e-4

    # Without remote code: HF's plain MT5, which drops the bias; the difference is the one reported.
    plain = hf_load(transformers.AutoModelForSeq2SeqLM, folder)
    assert type(plain) is transformers.MT5ForConditionalGeneration
    measured = float(np.abs(hf_logits(plain, long_enc, long_dec) - our_logits(cfg, params, long_enc, long_dec)).max())
    assert measured > 1e-2  # the bias matters on these weights ...
    assert measured == pytest.approx(reported, rel=1e-3)  # ... and the export said by how much
    # Our own re-import stays exact.
    back_cfg, back = tp.convert.load_hf(folder)
    assert back_cfg == cfg
    assert_same_tree(back, params)


def test_remote_model_without_the_switch_is_plain_mt5(tmp_path):
    """`cross_attention_bias: false` in config.json turns the addition off: the remote class then is MT5."""
    cfg, params = pegasus_model(seed=2)
    tp.convert.save_hf(cfg, params, tmp_path / "hf", report=lambda _: None)
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**hf_cfg, "cross_attention_bias": False}))
    enc, dec = t5_batch()
    off = hf_logits(remote_load(tmp_path / "hf"), enc, dec)
    without = our_logits(cfg.replace(cross_attention_bias=False), params, enc, dec)
    assert rel_err(without, off) < 1e-4 and rel_err(our_logits(cfg, params, enc, dec), off) > 1e-3


def test_attention_switches_still_need_allow_lossy(tmp_path):
    """What no shipped code computes (here RealFormer) is still refused without --allow-lossy."""
    cfg, params = pegasus_model(attention={"realformer": True})
    with pytest.raises(tp.UserError, match="realformer.*allow_lossy"):
        tp.convert.save_hf(cfg, params, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    said = []
    tp.convert.save_hf(cfg, params, tmp_path / "hf", allow_lossy=True, report=said.append)
    assert len(said) == 2 and said[0].startswith("lossy export: attention switches") and "trust_remote_code" in said[1]
    assert tp.convert.load_hf(tmp_path / "hf")[0] == cfg


def test_a_model_without_the_relative_bias_exports_lossily_with_a_zero_one(tmp_path):
    """RoPE T5 (no relative-bias table): `allow_lossy` writes a zero table HF loads, and the re-import keeps
    RoPE and every weight."""
    cfg = tp.T5Config.preset("tiny", vocab_size=120, attention={"position": "rope"})
    params = nn.meta.unbox(tp.models.T5(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 6), jnp.int32),
                                                  jnp.ones((1, 4), jnp.int32))["params"])
    assert "relpos_bias" not in params["encoder"]
    with pytest.raises(tp.UserError, match="rope.*allow_lossy"):
        tp.convert.save_hf(cfg, params, tmp_path / "hf")
    said = []
    tp.convert.save_hf(cfg, params, tmp_path / "hf", allow_lossy=True, report=said.append)
    assert said and said[0].startswith("lossy export: attention switches")
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf")
    table = hf.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    assert table.shape == (cfg.relative_buckets, cfg.num_heads) and not table.detach().abs().sum()
    got_cfg, got = tp.convert.load_hf(tmp_path / "hf")
    assert got_cfg == cfg
    assert_same_tree(got, params)


@pytest.fixture(scope="module")
def generation_pair(tmp_path_factory):
    """(remote-code HF model, our decoding adapter, our params, padded source ids) of a peaky T5 PEGASUS."""
    folder = tmp_path_factory.mktemp("remote_generate") / "hf"
    cfg, params = pegasus_model(seed=7)  # equal depths: HF 5 sizes its generation cache by num_layers
    head = np.asarray(params["decoder"]["lm_head"]["kernel"]) * 4.0  # peaky: some rows end early, some do not
    head[:, SEP] *= 1.5
    params["decoder"]["lm_head"]["kernel"] = jnp.asarray(head)
    tp.convert.save_hf(cfg, params, folder, report=lambda _: None)
    hf = remote_load(folder)
    assert (hf.generation_config.decoder_start_token_id, hf.generation_config.eos_token_id) == (CLS, SEP)
    src = np.random.default_rng(0).integers(103, cfg.vocab_size, (6, 9))
    src[1, 6:] = PAD
    src[4, 3:] = PAD
    return hf, tp.decoding.T5Decoding(cfg), params, src


def hf_generate(hf, src, **kw):
    out = hf.generate(input_ids=torch.tensor(src), attention_mask=torch.tensor(src != PAD), do_sample=False,
                      return_dict_in_generate=True, output_scores=True, **kw)
    scores = out.get("sequences_scores")
    return out.sequences.numpy()[:, 1:], None if scores is None else scores.numpy()


def trim(row):
    """New tokens up to and including the first [SEP]."""
    ends = np.flatnonzero(row == SEP)
    return row[:ends[0] + 1] if len(ends) else row


def assert_same_tokens(ours, lengths, theirs, max_new):
    assert ours.shape[0] == theirs.shape[0]
    for mine, n, ref in zip(ours, lengths, theirs, strict=True):
        want = trim(ref)
        np.testing.assert_array_equal(mine[:n], want)
        assert n == len(want) <= max_new and (mine[n:] == PAD).all()


def ended(rows):
    return np.array([SEP in trim(r) for r in rows])


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_equals_ours(generation_pair, use_cache):
    hf, model, params, src = generation_pair
    out = tp.decoding.generate(model, params, {"source_ids": src}, max_new_tokens=14)
    theirs, _ = hf_generate(hf, src, num_beams=1, max_new_tokens=14, use_cache=use_cache)
    lengths = np.asarray(out.lengths)[:, 0]
    assert_same_tokens(np.asarray(out.tokens)[:, 0], lengths, theirs, 14)
    assert ended(theirs).any() and not ended(theirs).all()  # both ways of stopping are exercised


@pytest.mark.parametrize("kw", [
    dict(num_beams=3, num_return_sequences=3, early_stopping=True, length_penalty=1.0, max_new_tokens=12),
    dict(num_beams=4, num_return_sequences=2, early_stopping=False, length_penalty=0.6, max_new_tokens=10),
])
def test_beam_search_equals_ours(generation_pair, kw):
    hf, model, params, src = generation_pair
    out = tp.decoding.generate(model, params, {"source_ids": src}, **kw)
    theirs, their_scores = hf_generate(hf, src, **kw)
    tokens = np.asarray(out.tokens).reshape(len(src) * kw["num_return_sequences"], -1)
    assert_same_tokens(tokens, np.asarray(out.lengths).reshape(-1), theirs, kw["max_new_tokens"])
    np.testing.assert_allclose(np.asarray(out.scores).reshape(-1), their_scores, rtol=1e-4, atol=1e-5)


# -- tokenizer ---------------------------------------------------------------------------------------------------

# Words jieba (HMM off) cuts whole and the vocab keeps whole, characters, WordPiece pieces, punctuation.
WORDS = ["中国", "人民", "北京", "我们", "经济", "发展", "hello", "wor", "##ld", "##s", "１９９８", "年", "，", "。",
         "!"]
CHARS = list("中国人民北京我们的是在经济发展有和了天安门爱喜欢新华社电日月")  # no "x", no "##x"
TEXTS = [
    "我爱北京天安门",  # 北京 kept whole; 天安门 is no vocab word: its characters
    "中国人民喜欢经济发展。",
    "Hello, WORLDs! héllo worldx",  # lower-cased, accent dropped; worlds: wor ##ld ##s; worldx: one [UNK] (bert4keras)
    "新华社北京１月１日电（记者）",  # full-width digits and brackets: out-of-vocab characters
    "人民日报１９９８年，我们是在发展的",
    "  空格\t和\n换行 ",
]


def wordpiece_vocab(tmp_path, tokens):
    from t5pegasus.text.vocab import BERT_HEAD

    vocab = list(BERT_HEAD) + [t for t in dict.fromkeys(tokens) if t not in BERT_HEAD]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path, len(vocab)


def export_with_vocab(tmp_path, vocab_path, vocab_size):
    cfg, params = pegasus_model(vocab_size=vocab_size)
    tp.convert.save_hf(cfg, params, tmp_path / "hf", extra_files={"vocab.txt": vocab_path}, report=lambda _: None)
    return tmp_path / "hf"


def test_remote_tokenizer_gives_our_ids_and_plain_one_still_loads(tmp_path):
    from t5pegasus.text.wordpiece import BertJiebaTokenizer

    vocab_path, size = wordpiece_vocab(tmp_path, WORDS + CHARS)
    folder = export_with_vocab(tmp_path, vocab_path, size)
    assert (folder / "tokenization_t5pegasus.py").read_bytes() == (
        REMOTE_CODE / "tokenization_t5pegasus.py").read_bytes()
    ours = BertJiebaTokenizer(vocab_path)
    theirs = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    assert type(theirs).__name__ == "T5PegasusTokenizer"
    assert (theirs.cls_token_id, theirs.sep_token_id, theirs.pad_token_id, theirs.unk_token_id) == (
        ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id)
    for text in TEXTS:
        assert theirs(text)["input_ids"] == ours.add_special(ours.encode(text)), text
    assert set(theirs(TEXTS[0])) == {"input_ids", "attention_mask"}  # what the seq2seq model takes: no segments
    # The cases the test is about do occur: a word kept whole, a word cut in pieces, unknown words.
    ids = ours.encode(" ".join(TEXTS))
    vocab = ours.tokens
    assert {vocab.index(w) for w in ("北京", "人民", "经济", "wor", "##ld")} <= set(ids) and ours.unk_id in ids
    assert ours.encode("worlds") == [vocab.index("wor"), vocab.index("##ld"), vocab.index("##s")]
    assert ours.encode("worldx") == [ours.unk_id]  # no piece fits "x": the whole word is unknown, as in bert4keras
    # Without remote code: HF's own BertTokenizer (characters, whole-word [UNK]): valid ids, not ours.
    plain = transformers.AutoTokenizer.from_pretrained(folder)
    assert type(plain).__name__ in ("BertTokenizer", "BertTokenizerFast")
    plain_ids = [plain(text)["input_ids"] for text in TEXTS]
    assert all(0 <= i < size for row in plain_ids for i in row)
    assert set(plain(TEXTS[0])) == {"input_ids", "attention_mask"}
    assert plain_ids[0] != ours.add_special(ours.encode(TEXTS[0]))


def test_remote_tokenizer_equals_ours_on_a_corpus(tmp_path):
    """A vocab built from part of the demo corpus (characters, ## pieces, frequent jieba words), compared on
    paragraphs it was not built from (so rare characters are [UNK])."""
    from t5pegasus.pretrain.corpora import peoples_daily_paragraphs
    from t5pegasus.text.vocab import build_wordpiece_vocab, save_vocab
    from t5pegasus.text.wordpiece import BertJiebaTokenizer

    paragraphs = list(itertools.islice(peoples_daily_paragraphs(), 400))
    vocab = build_wordpiece_vocab(paragraphs[:250], 3000)
    save_vocab(vocab, tmp_path / "vocab.txt")
    folder = export_with_vocab(tmp_path, tmp_path / "vocab.txt", len(vocab))
    ours = BertJiebaTokenizer(tmp_path / "vocab.txt")
    theirs = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    held_out = paragraphs[250:]
    want = [ours.add_special(ours.encode(text)) for text in held_out]
    assert [theirs(text)["input_ids"] for text in held_out] == want
    flat = [i for row in want for i in row]
    assert ours.unk_id in flat and any(len(vocab[i]) > 1 and not vocab[i].startswith(("[", "##")) for i in flat)
    # Decoding (special tokens skipped) is ours too, on text ids and on random ones (## pieces, [unused] ...).
    random_ids = np.random.default_rng(0).integers(0, len(vocab), (40, 30)).tolist()
    for ids in want + random_ids:
        assert theirs.decode(ids, skip_special_tokens=True) == ours.decode(ids), ids


# -- CLI -----------------------------------------------------------------------------------------------------------

def test_cli_exports_a_t5_pegasus_run_without_allow_lossy(tmp_path, capsys):
    import optax

    from t5pegasus.cli import main
    from t5pegasus.training.checkpoint import Checkpointer
    from t5pegasus.training.state import TrainState

    vocab_path, size = wordpiece_vocab(tmp_path, WORDS + CHARS)
    cfg, params = pegasus_model(seed=3, vocab_size=size)
    run = tmp_path / "run"
    run.mkdir()
    cfg.save(run / "model_config.json")
    (run / "vocab.txt").write_bytes(vocab_path.read_bytes())
    zero = jnp.zeros((), jnp.int32)
    state = TrainState(step=jnp.asarray(5, jnp.int32), params=params, opt_state=optax.sgd(1e-3).init(params),
                       ema=None, rng=jax.random.PRNGKey(0), bad_in_a_row=zero, skipped=zero)
    ckpt = Checkpointer(run / "checkpoints", asynchronous=False)
    ckpt.save(state, {"position": 0})
    ckpt.close()
    assert main(["convert", str(run), str(tmp_path / "hf")]) == 0
    out = capsys.readouterr().out
    assert "trust_remote_code=True" in out and "wrote" in out
    folder = tmp_path / "hf"
    assert {"modeling_t5pegasus.py", "tokenization_t5pegasus.py", "vocab.txt"} <= {p.name for p in folder.iterdir()}
    enc, dec = t5_batch()
    assert rel_err(our_logits(cfg, params, enc, dec), hf_logits(remote_load(folder), enc, dec)) < 1e-4
