"""GPT-2 decoding against HF `generate` (greedy and beam, with and without left padding), and UniLM (BERT
seq2seq) decoding against recomputing the whole source + target without a cache."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import t5pegasus as tp
from tests.test_gpt_parity import small_gpt2

EOS = 1


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("hf_gpt2_generate"))
    hf = small_gpt2(folder, seed=0)
    with torch.no_grad():  # peakier logits, the end token sometimes on top
        hf.transformer.wte.weight.mul_(3.0)
        hf.transformer.wte.weight[EOS].mul_(1.6)
    hf.save_pretrained(folder)
    cfg, params = tp.convert.load_hf(folder)
    assert cfg.eos_token_id == EOS
    prompt = np.random.default_rng(1).integers(2, cfg.vocab_size, (5, 6))
    mask = np.ones_like(prompt, bool)
    mask[1, :2] = False  # left padding, as HF expects for decoder-only generation
    mask[3, :4] = False
    return hf, tp.decoding.GPTDecoding(cfg), params, prompt, mask


def trim(row):
    ends = np.flatnonzero(row == EOS)
    return row[:ends[0] + 1] if len(ends) else row


CASES = [
    dict(max_new_tokens=10, repetition_penalty=2.0, no_repeat_ngram_size=2),
    dict(max_new_tokens=8, num_beams=3, num_return_sequences=2, early_stopping=True, length_penalty=0.8,
         no_repeat_ngram_size=1),
]


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("kw", CASES)
def test_gpt2_equals_hf(gpt, kw, padded):
    hf, model, params, prompt, mask = gpt
    if not padded:
        mask = np.ones_like(mask)
    out = tp.decoding.generate(model, params, {"prompt_ids": prompt, "prompt_mask": mask}, **kw)
    ref = hf.generate(input_ids=torch.tensor(prompt), attention_mask=torch.tensor(mask.astype(np.int64)),
                      do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True, **kw)
    theirs = ref.sequences.numpy()[:, prompt.shape[1]:]
    tokens = np.asarray(out.tokens).reshape(len(theirs), -1)
    lengths = np.asarray(out.lengths).reshape(-1)
    for mine, n, row in zip(tokens, lengths, theirs, strict=True):
        want = trim(row)
        np.testing.assert_array_equal(mine[:n], want)
        assert n == len(want)
    if kw.get("num_beams", 1) > 1:
        np.testing.assert_allclose(np.asarray(out.scores).reshape(-1), ref.sequences_scores.numpy(), rtol=1e-4,
                                   atol=1e-5)
    assert len({tuple(trim(r)) for r in theirs}) > 2 and len(set(tokens.ravel())) > 8  # not degenerate


@pytest.fixture(scope="module")
def unilm():
    cfg = tp.BertConfig.preset("tiny", attention="unilm", with_mlm=True)
    model = tp.models.Bert(cfg)
    rng = np.random.default_rng(0)
    src = rng.integers(4, cfg.vocab_size, (3, 7))
    src[:, 0] = cfg.cls_token_id
    src[:, -1] = cfg.sep_token_id
    src[1, 4:] = cfg.pad_token_id  # a shorter source, right-padded: [CLS] x x [SEP]
    src[1, 3] = cfg.sep_token_id
    params = tp.models.unbox(jax.jit(model.init)(jax.random.key(0), jnp.asarray(src))["params"])
    scale = lambda path, x: x * 3.0 if str(path[-1]) in ("['kernel']", "['embedding']") else x
    params = jax.tree_util.tree_map_with_path(scale, params)  # larger weights: varied, non-degenerate outputs
    return cfg, model, params, src


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=2, early_stopping=True)])
def test_unilm_equals_uncached_recomputation(unilm, kw):
    cfg, model, params, src = unilm
    out = tp.decoding.generate(tp.decoding.UniLMDecoding(cfg), params, {"source_ids": src}, max_new_tokens=6,
                               **kw)
    tokens, lengths, scores = (np.asarray(x)[:, 0] for x in out)
    forward = jax.jit(lambda ids, seg: jax.nn.log_softmax(model.apply({"params": params}, ids, seg).logits))
    for r in range(len(src)):
        source = src[r][src[r] != cfg.pad_token_id]  # no padding at all in the reference
        n = lengths[r]
        ids = np.concatenate([source, tokens[r, :n]])[None]
        seg = np.concatenate([np.zeros(len(source)), np.ones(n)])[None].astype(np.int32)
        logp = np.asarray(forward(jnp.asarray(ids), jnp.asarray(seg)))[0, len(source) - 1:-1]
        if not kw:
            np.testing.assert_array_equal(tokens[r, :n], logp.argmax(-1))
            np.testing.assert_allclose(scores[r], logp[np.arange(n), tokens[r, :n]].sum(), rtol=1e-3, atol=1e-3)
        else:
            want = logp[np.arange(n), tokens[r, :n]].sum() / n
            np.testing.assert_allclose(scores[r], want, rtol=1e-3, atol=1e-3)
        assert n == 6 or tokens[r, n - 1] == cfg.sep_token_id
    assert len(set(tokens.ravel())) > 4


def test_unilm_needs_the_seq2seq_mask():
    with pytest.raises(tp.UserError):
        tp.decoding.UniLMDecoding(dataclasses.replace(tp.BertConfig.preset("tiny"), mask="bidirectional"))
