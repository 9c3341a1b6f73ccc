"""Our import, models and tokenizer against bert4keras 0.11.5 itself: tests/golden/*_b4k/ hold tiny random-weight
models that bert4keras built, saved in the releases' TF checkpoint layout, with the inputs it was given and the
outputs it computed (scripts/make_bert4keras_goldens.py writes them; bert4keras is not needed here).

Outputs are compared as centred log-probabilities (log p minus its mean over the vocab: the logits up to a
constant), at every non-padding position, within 1e-4 absolute; the recorded centred log-probabilities span
about +-15, so that is a relative error of ~1e-5.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import t5pegasus as tp
from t5pegasus.text.wordpiece import BertJiebaTokenizer

pytest.importorskip("tensorflow")
from t5pegasus.convert.tf import load_tf  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
T5_PEGASUS, SIMBERT, BERT_CLN, CPM_LM = (GOLDEN / f"{n}_b4k" for n in ("t5_pegasus", "simbert", "bert_cln",
                                                                       "cpm_lm"))
TOL = 1e-4


def centred(logp: np.ndarray) -> np.ndarray:
    return logp - logp.mean(-1, keepdims=True)


def logprob_error(logits, probs: np.ndarray, valid: np.ndarray) -> float:
    """Max |centred log p (ours) - centred log p (bert4keras)| over the valid positions."""
    ours = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), -1), np.float64)
    ref = np.log(probs.astype(np.float64))
    return float(np.abs(centred(ours) - centred(ref))[valid].max())


def golden(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "golden.npz") as g:
        return dict(g)


# --- T5 PEGASUS (model='mt5.1.1') ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def t5_pegasus():
    cfg, params = load_tf(T5_PEGASUS)
    return cfg, params, golden(T5_PEGASUS)


def t5_error(cfg, params, g) -> float:
    logits = tp.models.T5(cfg).apply({"params": params}, jnp.asarray(g["encoder_ids"]), jnp.asarray(g["decoder_ids"]))
    return logprob_error(logits, g["probs"], g["decoder_ids"] != 0)


def test_t5_pegasus_release_folder_reads_as_bert4keras_built_it(t5_pegasus):
    cfg, _, _ = t5_pegasus
    b4k = json.loads((T5_PEGASUS / "config.json").read_text())
    assert (cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff, cfg.vocab_size, cfg.relative_buckets) == (
        b4k["hidden_size"], b4k["num_attention_heads"], b4k["attention_head_size"], b4k["intermediate_size"],
        b4k["vocab_size"], b4k["relative_attention_num_buckets"])
    assert cfg.num_encoder_layers == cfg.num_decoder_layers == b4k["num_hidden_layers"]
    # the three T5 PEGASUS switches, the untied head, and bert4keras' fixed max distance / eps
    assert cfg.cross_attention_bias and cfg.scale_logits and cfg.feed_forward == "gated-gelu-erf"
    assert not cfg.tie_word_embeddings
    assert (cfg.relative_max_distance, cfg.layer_norm_epsilon) == (128, 1e-6)
    assert (cfg.pad_token_id, cfg.unk_token_id, cfg.decoder_start_token_id, cfg.eos_token_id) == (0, 100, 101, 102)


def test_t5_pegasus_reproduces_bert4keras_probabilities(t5_pegasus):
    assert t5_error(*t5_pegasus) < TOL


@pytest.mark.parametrize("change", [dict(cross_attention_bias=False), dict(scale_logits=False),
                                    dict(feed_forward="gated-gelu")], ids=lambda c: next(iter(c)))
def test_each_t5_pegasus_switch_shows_in_the_golden(t5_pegasus, change):
    """The golden pins every switch: turning one off misses bert4keras by far more than the tolerance."""
    cfg, params, g = t5_pegasus
    assert t5_error(cfg.replace(**change), params, g) > 30 * TOL


def test_t5_pegasus_cached_greedy_steps_match_bert4keras(t5_pegasus):
    """The cached decoder (one token a step, as generation runs) gives bert4keras' full-sequence output too."""
    cfg, params, g = t5_pegasus
    model = tp.models.T5(cfg)
    row = 1  # the longest decoder row, no padding
    enc, dec = jnp.asarray(g["encoder_ids"][row:row + 1]), g["decoder_ids"][row:row + 1]
    mask = enc != cfg.pad_token_id
    encoded = model.apply({"params": params}, enc, mask, method=model.encode)
    cache = tp.models.t5.init_cache(model, params, encoded, mask, dec.shape[1])
    steps = []
    for t in range(dec.shape[1]):
        logits, cache = tp.models.t5.decode_step(model, params, cache, encoded, mask, jnp.asarray(dec[:, t:t + 1]))
        steps.append(np.asarray(logits)[:, -1])
    assert logprob_error(np.stack(steps, 1), g["probs"][row:row + 1], dec != 0) < TOL


@pytest.fixture(scope="module")
def recorded_sentences():
    return json.loads((T5_PEGASUS / "tokenizer.json").read_text(encoding="utf-8"))["sentences"]


def test_tokenizer_gives_bert4keras_ids(recorded_sentences):
    tok = BertJiebaTokenizer(T5_PEGASUS / "vocab.txt")
    assert len(recorded_sentences) >= 5
    for s in recorded_sentences:
        assert tok.add_special(tok.encode(s["text"])) == s["ids"], (s["text"], tok.tokenize(s["text"]), s["tokens"])
    # the recorded sentences cover in-vocab jieba words, characters of out-of-vocab words, unknown characters,
    # ## pieces and a word WordPiece cannot cut (one [UNK])
    tokens = [t for s in recorded_sentences for t in s["tokens"]]
    assert any(len(t) > 1 and "\u4e00" <= t[0] <= "\u9fff" for t in tokens)
    assert any(t.startswith("##") for t in tokens) and "qzx" in tokens
    assert sum(s["ids"].count(tok.unk_id) for s in recorded_sentences) >= 3


# --- SimBERT (model='bert', application='unilm', with_pool='linear') ----------------------------------------

def test_simbert_reproduces_bert4keras_sentence_vector_and_mlm():
    cfg, params = load_tf(SIMBERT)
    assert cfg.with_pooler and cfg.with_mlm
    # bert4keras takes the UniLM mask and the linear pooler as build arguments, not from bert_config.json;
    # ours are config fields, given here as the simbert-base preset has them.
    cfg = cfg.replace(mask="unilm", pooler_activation="linear")
    g = golden(SIMBERT)
    out = tp.models.Bert(cfg).apply({"params": params}, jnp.asarray(g["token_ids"]), jnp.asarray(g["segment_ids"]))
    assert logprob_error(out.logits, g["probs"], g["token_ids"] != 0) < TOL
    pooled = np.asarray(out.pooled)
    assert np.abs(pooled - g["pooled"]).max() < TOL * np.abs(g["pooled"]).max()
    # the golden pins the mask and the pooler: the plain BERT reading of the same folder misses both
    plain = tp.models.Bert(cfg.replace(mask="bidirectional", pooler_activation="tanh")).apply(
        {"params": params}, jnp.asarray(g["token_ids"]), jnp.asarray(g["segment_ids"]))
    assert logprob_error(plain.logits, g["probs"], g["token_ids"] != 0) > 100 * TOL
    assert np.abs(np.asarray(plain.pooled) - g["pooled"]).max() > 0.1 * np.abs(g["pooled"]).max()


# --- BERT with conditional LayerNorm (layer_norm_cond = a label embedding, application='lm') -----------------

# bert4keras layer -> our norm module
_CLN_NORMS = {"Embedding-Norm": ("embeddings_norm",), "MLM-Norm": ("mlm_norm",),
              **{f"Transformer-{i}-MultiHeadSelfAttention-Norm": (f"layers_{i}", "attention_norm") for i in range(2)},
              **{f"Transformer-{i}-FeedForward-Norm": (f"layers_{i}", "mlp_norm") for i in range(2)}}


def _cln_model(cond):
    """The golden's BERT with bert4keras' label embedding as our `condition_embeddings` table and its condition
    projections in our conditional LayerNorms (the checkpoint holds the unconditioned BERT: bert4keras'
    variable_mapping names no conditional weight, so they come from condition.npz)."""
    cfg, params = load_tf(BERT_CLN)
    table = cond["label_embedding"]
    cfg = cfg.replace(mask="causal", conditional_layer_norm=True, condition_size=table.shape[1],
                      num_conditions=table.shape[0])
    params = jax.tree.map(np.asarray, params)
    assert {k.split("/")[0] for k in cond if k != "label_embedding"} == set(_CLN_NORMS)
    for layer, path in _CLN_NORMS.items():
        module = params
        for p in path:
            module = module[p]
        module["condition_scale"] = cond[f"{layer}/gamma_dense"]
        module["condition_bias"] = cond[f"{layer}/beta_dense"]
    params["condition_embeddings"] = table
    return cfg, params


def test_conditional_layer_norm_reproduces_bert4keras_for_two_labels():
    """bert4keras' `layer_norm_cond` = Embedding(labels, 16)(label): our model looks the label up in its own
    table (`labels`), so the parity covers the embedding as well as the conditional LayerNorms."""
    with np.load(BERT_CLN / "condition.npz") as f:
        cond = dict(f)
    cfg, params = _cln_model(cond)
    g = golden(BERT_CLN)
    ids, segments = jnp.asarray(g["token_ids"]), jnp.asarray(g["segment_ids"])
    out = tp.models.Bert(cfg).apply({"params": params}, ids, segments, labels=jnp.asarray(g["labels"][:, 0]))
    valid = g["token_ids"] != 0
    assert logprob_error(out.logits, g["probs"], valid) < TOL
    # each label's rows on their own, and the label matters by far more than the tolerance
    for rows in (slice(0, 2), slice(2, 4)):
        assert logprob_error(out.logits[rows], g["probs"][rows], valid[rows]) < TOL
    assert logprob_error(out.logits[0:2], g["probs"][2:4], valid[0:2]) > 100 * TOL
    # the table lookup is the by-hand lookup of the label embedding, fed as a raw condition vector
    by_hand = tp.models.Bert(cfg).apply({"params": params}, ids, segments,
                                        condition=jnp.asarray(cond["label_embedding"][g["labels"][:, 0]]))
    np.testing.assert_allclose(np.asarray(by_hand.logits), np.asarray(out.logits), rtol=0, atol=1e-5)


def test_cached_decoding_with_a_label_equals_the_full_forward():
    """The causal (application='lm') model decoded chunk by chunk through the KV cache, the label given to
    every chunk, computes the full forward's logits."""
    from t5pegasus.models.bert import decode_step, init_cache

    with np.load(BERT_CLN / "condition.npz") as f:
        cfg, params = _cln_model(dict(f))
    g = golden(BERT_CLN)
    ids = jnp.asarray(g["token_ids"])
    labels = jnp.asarray(g["labels"][:, 0])
    model = tp.models.Bert(cfg)
    full = model.apply({"params": params}, ids, labels=labels).logits
    cache = init_cache(model, params, ids.shape[0], ids.shape[1])
    steps = [ids[:, :3]] + [ids[:, i:i + 1] for i in range(3, ids.shape[1])]
    got = []
    for chunk in steps:
        out, cache = decode_step(model, params, cache, chunk, mask=jnp.ones(chunk.shape, bool), labels=labels)
        got.append(out.logits)
    valid = np.asarray(g["token_ids"] != 0)
    err = np.abs(np.asarray(jnp.concatenate(got, 1)) - np.asarray(full))[valid].max()
    assert err < 1e-4, err
    wrong, _ = decode_step(model, params, init_cache(model, params, ids.shape[0], ids.shape[1]), ids,
                           mask=jnp.ones(ids.shape, bool), labels=1 - labels)
    assert np.abs(np.asarray(wrong.logits) - np.asarray(full))[valid].max() > 100 * TOL


# --- CPM-LM shaped GPT-2 (model='gpt2'; bert4keras' gpt/... names) -------------------------------------------

def test_cpm_lm_reproduces_bert4keras():
    cfg, params = load_tf(CPM_LM)
    g = golden(CPM_LM)
    logits = tp.models.GPT(cfg).apply({"params": params}, jnp.asarray(g["token_ids"]),
                                      mask=jnp.asarray(g["token_ids"] != 0))
    assert logprob_error(logits, g["probs"], g["token_ids"] != 0) < TOL
    # read as bert4keras built it: its config.json's "gelu" is erf, its LayerNorm eps 1e-5
    b4k = json.loads((CPM_LM / "config.json").read_text())
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size, cfg.vocab_size,
            cfg.max_position_embeddings) == (b4k["hidden_size"], b4k["num_hidden_layers"],
                                             b4k["num_attention_heads"], b4k["intermediate_size"],
                                             b4k["vocab_size"], b4k["max_position_embeddings"])
    assert (cfg.hidden_act, cfg.layer_norm_epsilon) == ("gelu-erf", 1e-5)
    # the golden pins the activation: GPT-2's tanh GELU misses by more than the tolerance
    tanh = tp.models.GPT(cfg.replace(hidden_act="gelu")).apply({"params": params}, jnp.asarray(g["token_ids"]),
                                                               mask=jnp.asarray(g["token_ids"] != 0))
    assert logprob_error(tanh, g["probs"], g["token_ids"] != 0) > 3 * TOL
