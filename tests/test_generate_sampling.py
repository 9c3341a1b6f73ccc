"""Decoding through the model-agnostic interface with a toy bigram LM (logits depend on the last token only,
so every step's support can be computed directly): sampling supports and seeds, the end token staying a
candidate, stopping at the length limit, prompt prefixes, and the score processors against HF's."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

import t5pegasus as tp
from t5pegasus.decoding import Start, repeat_rows

EOS, PAD, VOCAB = 1, 0, 24


@dataclasses.dataclass(frozen=True)
class Bigram:
    """A decoding model whose next-token logits are `params["table"][last token]`; the prompt is the prefix."""

    eos_token_id: int = EOS
    pad_token_id: int = PAD

    def start(self, params, inputs, copies, max_new_tokens):
        prompt = repeat_rows(jnp.asarray(inputs["prompt"], jnp.int32), copies)
        return Start({"steps": jnp.zeros(prompt.shape[0], jnp.int32)}, prompt, jnp.ones(prompt.shape, bool))

    def step(self, params, state, ids):
        return params["table"][ids[:, 0]], {"steps": state["steps"] + 1}

    def reorder(self, state, index):
        return {"steps": state["steps"][index]}


def table(seed=0, eos_logit=None):
    t = np.random.default_rng(seed).normal(size=(VOCAB, VOCAB)).astype(np.float32) * 2.0
    if eos_logit is not None:
        t[:, EOS] = eos_logit
    return {"table": jnp.asarray(t)}


PROMPT = np.array([[5, 7, 9], [3, 3, 4], [10, 2, 8], [6, 11, 12]])


def support_np(logits, temperature, top_k, top_p):
    """The sampling support from the formulas: top-k set, then top-p smallest nucleus, end token always in."""
    z = logits.astype(np.float64) / temperature
    keep = np.ones_like(z, bool)
    if top_k:
        keep = z >= np.sort(z)[-top_k]
        keep[EOS] = True
    if top_p < 1.0:
        zk = np.where(keep, z, -np.inf)
        p = np.exp(zk - zk.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        nucleus = np.zeros_like(keep)
        nucleus[order[before < top_p]] = True  # the smallest set of top tokens whose mass reaches top_p
        keep = keep & nucleus
        keep[EOS] = True
    return keep


@pytest.mark.parametrize("kw", [dict(top_k=3), dict(top_p=0.6, temperature=0.7), dict(top_k=5, top_p=0.8)])
def test_samples_stay_in_the_support(kw):
    params = table(1)
    settings = tp.decoding.Settings(max_new_tokens=12, do_sample=True, num_return_sequences=8, **kw)
    out = tp.decoding.generate(Bigram(), params, {"prompt": PROMPT}, settings, seed=3)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    t = np.asarray(params["table"])
    checked = 0
    for b in range(len(PROMPT)):
        for s in range(8):
            prev = PROMPT[b, -1]
            for i in range(lengths[b, s]):
                ok = support_np(t[prev], kw.get("temperature", 1.0), kw.get("top_k", 0), kw.get("top_p", 1.0))
                assert ok[tokens[b, s, i]], (b, s, i, tokens[b, s, i])
                prev, checked = tokens[b, s, i], checked + 1
            assert (tokens[b, s, lengths[b, s]:] == PAD).all()
    assert checked > 100
    # The supports really restrict: far fewer distinct tokens than the vocabulary follow a given token.
    assert len(set(tokens[:, :, 0].ravel())) < VOCAB // 2


def test_sampling_is_reproducible_per_seed():
    params = table(2)
    run = lambda seed: np.asarray(tp.decoding.generate(Bigram(), params, {"prompt": PROMPT}, seed=seed,
                                                       max_new_tokens=10, do_sample=True, top_k=6,
                                                       num_return_sequences=3).tokens)
    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[:, 0], a[:, 1])  # copies of one example are sampled independently


def test_end_token_stays_a_candidate_of_top_k():
    # The end token is never among the top 1, yet with top_k=1 it is still sampled sometimes (HF would not).
    t = np.asarray(table(3)["table"]).copy()
    t[:, EOS] = t.max(axis=1) - 0.5
    out = tp.decoding.generate(Bigram(), {"table": jnp.asarray(t)}, {"prompt": PROMPT}, max_new_tokens=12,
                               do_sample=True, top_k=1, num_return_sequences=8, seed=0)
    lengths = np.asarray(out.lengths)
    assert (lengths < 12).any()
    tokens = np.asarray(out.tokens)
    for b, s in zip(*np.nonzero(lengths < 12), strict=True):
        assert tokens[b, s, lengths[b, s] - 1] == EOS


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3, early_stopping=True), dict(do_sample=True, top_p=0.9)])
def test_model_that_never_ends_stops_at_max_length(kw):
    out = tp.decoding.generate(Bigram(), table(4, eos_logit=-1e4), {"prompt": PROMPT}, max_new_tokens=7, **kw)
    assert (np.asarray(out.lengths) == 7).all()
    assert not (np.asarray(out.tokens) == EOS).any()


def test_greedy_follows_the_bigram_chain_and_min_length():
    params = table(5)
    t = np.asarray(params["table"])
    out = tp.decoding.generate(Bigram(), params, {"prompt": PROMPT}, max_new_tokens=9, min_new_tokens=4)
    for b in range(len(PROMPT)):
        prev = PROMPT[b, -1]
        for i in range(int(out.lengths[b, 0])):
            logits = t[prev].copy()
            if i < 4:
                logits[EOS] = -np.inf
            assert out.tokens[b, 0, i] == np.argmax(logits)
            prev = int(out.tokens[b, 0, i])


def test_processors_equal_hf():
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 6, (5, 11))  # a small alphabet, so n-grams repeat
    scores = rng.normal(size=(5, VOCAB)).astype(np.float32)
    valid = np.ones_like(seq, bool)
    got = tp.decoding.repetition_penalty(jnp.asarray(scores), jnp.asarray(seq), jnp.asarray(valid), 1.7)
    want = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor(seq), torch.tensor(scores)).numpy()
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    banned_fn = jax.jit(tp.decoding.banned_ngram_tokens, static_argnums=(3, 4))
    for n in (1, 2, 3, 12):
        for cur in (1, 2, 7, 11):
            banned = banned_fn(jnp.asarray(seq), jnp.asarray(valid), jnp.int32(cur), n, VOCAB)
            ref = NoRepeatNGramLogitsProcessor(n)(torch.tensor(seq[:, :cur]), torch.tensor(scores)).numpy()
            np.testing.assert_array_equal(np.asarray(banned), np.isinf(ref), err_msg=f"n={n} cur={cur}")


def test_bad_settings_are_user_errors():
    for kw in [dict(max_new_tokens=0), dict(min_new_tokens=5, max_new_tokens=4), dict(num_beams=2, do_sample=True),
               dict(num_return_sequences=2), dict(num_beams=2, num_return_sequences=3), dict(top_p=0.0),
               dict(temperature=0.0), dict(early_stopping="sometimes")]:
        with pytest.raises(tp.UserError):
            tp.decoding.Settings(**kw)
    with pytest.raises(tp.UserError):
        tp.decoding.generate(Bigram(), table(), {"prompt": PROMPT}, beams=3)


def test_greedy_token_is_jnp_argmax_with_ties_and_nan():
    from t5pegasus.decoding.processors import greedy_token

    rng = np.random.default_rng(3)
    scores = rng.integers(-3, 4, (64, 50)).astype(np.float32)  # many ties: the first maximum wins
    scores[5, [7, 20]] = np.nan
    scores[6, :] = -np.inf
    np.testing.assert_array_equal(greedy_token(jnp.asarray(scores)), jnp.argmax(jnp.asarray(scores), axis=-1))
