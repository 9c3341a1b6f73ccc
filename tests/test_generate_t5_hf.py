"""T5 decoding against HF transformers `generate` on the same random model: greedy and beam search, token ids
exactly and beam scores to float32 tolerance, with length penalty, early stopping, minimum length,
repetition penalty and no-repeat-n-gram."""

import numpy as np
import pytest
import torch

import t5pegasus as tp
from tests.hf_reference import small_t5

EOS, PAD = 1, 0


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(HF model, our decoding adapter, our params, source ids with padding)."""
    folder = str(tmp_path_factory.mktemp("hf_t5_generate"))
    hf = small_t5("mt5", folder, seed=0, num_decoder_layers=2)  # HF 5 sizes its cache by num_layers
    with torch.no_grad():  # peaky, non-degenerate outputs: some rows end early, some run to the limit
        hf.lm_head.weight.mul_(4.0)
        hf.lm_head.weight[EOS].mul_(2.0)
    hf.save_pretrained(folder)
    cfg, params = tp.convert.load_hf(folder)
    assert (cfg.eos_token_id, cfg.decoder_start_token_id, cfg.pad_token_id) == (EOS, 0, PAD)
    rng = np.random.default_rng(0)
    src = rng.integers(2, cfg.vocab_size, (6, 9))
    src[1, 6:] = PAD
    src[4, 3:] = PAD
    return hf, tp.decoding.T5Decoding(cfg), params, src


def hf_generate(hf, src, **kw):
    out = hf.generate(input_ids=torch.tensor(src), attention_mask=torch.tensor(src != PAD), do_sample=False,
                      return_dict_in_generate=True, output_scores=True, **kw)
    return out.sequences.numpy()[:, 1:], (None if out.get("sequences_scores") is None
                                          else out.sequences_scores.numpy())


def trim(row):
    """New tokens up to and including the first end token."""
    ends = np.flatnonzero(row == EOS)
    return row[:ends[0] + 1] if len(ends) else row


def assert_same_tokens(ours, lengths, theirs, max_new):
    assert ours.shape[0] == theirs.shape[0]
    for mine, n, ref in zip(ours, lengths, theirs, strict=True):
        want = trim(ref)
        np.testing.assert_array_equal(mine[:n], want)
        assert n == len(want) and (mine[n:] == PAD).all()
        assert n <= max_new


GREEDY = [
    dict(max_new_tokens=14),
    dict(max_new_tokens=12, min_new_tokens=5, repetition_penalty=1.4, no_repeat_ngram_size=2),
]


@pytest.mark.parametrize("kw", GREEDY)
def test_greedy_equals_hf(pair, kw):
    hf, model, params, src = pair
    out = tp.decoding.generate(model, params, {"source_ids": src}, **kw)
    theirs, _ = hf_generate(hf, src, num_beams=1, **kw)
    lengths = np.asarray(out.lengths)[:, 0]
    assert_same_tokens(np.asarray(out.tokens)[:, 0], lengths, theirs, kw["max_new_tokens"])
    # Meaningful: some rows end with the end token, some run to the limit.
    ended = np.array([EOS in trim(r) for r in theirs])
    assert ended.any() and not ended.all()
    if "min_new_tokens" in kw:
        assert (lengths >= kw["min_new_tokens"]).all()


BEAM = [
    dict(num_beams=3, num_return_sequences=3, early_stopping=True, length_penalty=1.0, max_new_tokens=12),
    dict(num_beams=4, num_return_sequences=2, early_stopping=False, length_penalty=0.6, max_new_tokens=10,
         no_repeat_ngram_size=2),
    dict(num_beams=3, num_return_sequences=1, early_stopping="never", length_penalty=1.5, max_new_tokens=10,
         min_new_tokens=3, repetition_penalty=1.3),
]


@pytest.mark.parametrize("kw", BEAM)
def test_beam_search_equals_hf(pair, kw):
    hf, model, params, src = pair
    out = tp.decoding.generate(model, params, {"source_ids": src}, **kw)
    theirs, their_scores = hf_generate(hf, src, **kw)
    n = kw["num_return_sequences"]
    tokens = np.asarray(out.tokens).reshape(len(src) * n, -1)
    lengths = np.asarray(out.lengths).reshape(-1)
    assert_same_tokens(tokens, lengths, theirs, kw["max_new_tokens"])
    np.testing.assert_allclose(np.asarray(out.scores).reshape(-1), their_scores, rtol=1e-4, atol=1e-5)
