"""The compiled decoding loops: greedy / sampling and beam search, each one `lax.while_loop` over steps.

Rows are laid out example-major: example b's copies (beams or samples) are rows b*copies .. b*copies+copies-1.
Each loop keeps a token buffer [rows, P + max_new] (prefix, then new tokens) for the repetition and n-gram
rules and feeds the model one token per row per step through its KV cache.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from t5pegasus.decoding import processors
from t5pegasus.decoding.adapters import DecodingModel, Start
from t5pegasus.decoding.settings import Settings

BIG_NEG = -1.0e9  # HF's "excluded" score offset in beam search


class Output(NamedTuple):
    """New tokens [batch, n, max_new] (pad after the end), lengths [batch, n] (end token included) and scores
    [batch, n]: beam search's length-penalised score, else the sum of the chosen tokens' log-probabilities
    under the distribution decoded from."""

    tokens: Array
    lengths: Array
    scores: Array


def _buffer(start: Start, max_new: int, pad: int) -> tuple[Array, Array]:
    rows, p = start.prefix.shape
    seq = jnp.concatenate([start.prefix.astype(jnp.int32), jnp.full((rows, max_new), pad, jnp.int32)], axis=1)
    valid = jnp.concatenate([start.prefix_valid, jnp.zeros((rows, max_new), jnp.bool_)], axis=1)
    return seq, valid


def sample_or_greedy(model: DecodingModel, params: Any, start: Start, settings: Settings, rng: Array) -> Output:
    """Greedy (argmax) or ancestral sampling; a row stops at its end token, the loop when all rows have."""
    max_new, eos, pad = settings.max_new_tokens, model.eos_token_id, model.pad_token_id
    seq, valid = _buffer(start, max_new, pad)
    rows, p = start.prefix.shape

    def cond(carry: tuple) -> Array:
        t, _, _, _, done, _, _ = carry
        return (t < max_new) & ~jnp.all(done)

    def body(carry: tuple) -> tuple:
        t, state, seq, valid, done, lengths, scores = carry
        last = jax.lax.dynamic_slice_in_dim(seq, p + t - 1, 1, axis=1)
        logits, state = model.step(params, state, last)
        logits = processors.constrain(logits.astype(jnp.float32), seq, valid, p + t, t, settings, eos)
        if settings.do_sample:
            logits = processors.support(logits, settings, eos)
            token = jax.random.categorical(jax.random.fold_in(rng, t), logits, axis=-1)
        else:
            token = processors.greedy_token(logits)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
        token = jnp.where(done, pad, token).astype(jnp.int32)
        scores = scores + jnp.where(done, 0.0, logp)
        lengths = jnp.where(done, lengths, t + 1)
        seq = jax.lax.dynamic_update_slice_in_dim(seq, token[:, None], p + t, axis=1)
        valid = jax.lax.dynamic_update_slice_in_dim(valid, ~done[:, None], p + t, axis=1)
        done = done | (token == eos)
        return t + 1, state, seq, valid, done, lengths, scores

    init = (jnp.int32(0), start.state, seq, valid, jnp.zeros((rows,), jnp.bool_), jnp.zeros((rows,), jnp.int32),
            jnp.zeros((rows,), jnp.float32))
    _, _, seq, _, _, lengths, scores = jax.lax.while_loop(cond, body, init)
    n = settings.copies
    return Output(seq[:, p:].reshape(-1, n, max_new), lengths.reshape(-1, n), scores.reshape(-1, n))


class _Beams(NamedTuple):
    t: Array
    state: Any
    seq: Array  # running [B, K, S]
    valid: Array  # [B, K, S]
    scores: Array  # running accumulated log-probs [B, K]
    fin_seq: Array  # finished hypotheses [B, K, S]
    fin_scores: Array  # length-penalised [B, K]
    fin_len: Array  # new tokens [B, K]
    fin_done: Array  # slot holds a finished hypothesis [B, K]
    improvable: Array  # HF's "early stop heuristic unsatisfied" [B]
    go_on: Array  # scalar


def beam_search(model: DecodingModel, params: Any, start: Start, settings: Settings) -> Output:
    """HF transformers' (v5) vectorised beam search: keep 2K candidates per step, the best K unfinished run
    on, finished ones among the top K enter the per-example pool of K hypotheses with score/len**alpha."""
    k, max_new, eos, pad = settings.num_beams, settings.max_new_tokens, model.eos_token_id, model.pad_token_id
    alpha, early = settings.length_penalty, settings.early_stopping
    seq, valid = _buffer(start, max_new, pad)
    rows, p = start.prefix.shape
    b, s = rows // k, seq.shape[1]
    keep = 2 * k
    top_k_mask = jnp.arange(keep) < k

    def gather(x: Array, idx: Array) -> Array:  # x [B, M, ...], idx [B, J] -> [B, J, ...]
        return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

    def body(c: _Beams) -> _Beams:
        t = c.t
        last = jax.lax.dynamic_slice_in_dim(c.seq.reshape(rows, s), p + t - 1, 1, axis=1)
        logits, state = model.step(params, c.state, last)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        logp = processors.constrain(logp, c.seq.reshape(rows, s), c.valid.reshape(rows, s), p + t, t, settings,
                                    eos)
        vocab = logp.shape[-1]
        total = (logp.reshape(b, k, vocab) + c.scores[:, :, None]).reshape(b, k * vocab)
        cand_scores, flat = jax.lax.top_k(total, keep)
        src, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        cand_seq = gather(c.seq, src)
        cand_seq = jax.lax.dynamic_update_slice_in_dim(cand_seq, token[:, :, None], p + t, axis=2)
        cand_valid = jax.lax.dynamic_update_slice_in_dim(gather(c.valid, src), jnp.ones((b, keep, 1), jnp.bool_),
                                                         p + t, axis=2)
        hits = (token == eos) | (t + 1 >= max_new)
        # Running beams: the best K candidates that did not stop.
        run_scores, pick = jax.lax.top_k(cand_scores + hits * BIG_NEG, k)
        seq_next, valid_next = gather(cand_seq, pick), gather(cand_valid, pick)
        rows_next = (jnp.arange(b)[:, None] * k + gather(src, pick)).reshape(rows)
        # Finished pool: stopped candidates among the top K, penalised by length, merged with the pool.
        full = jnp.all(c.fin_done, axis=1, keepdims=True) & (early is True)
        fin_cand = cand_scores / (t + 1).astype(jnp.float32) ** alpha
        fin_cand = fin_cand + full * BIG_NEG + (~c.improvable[:, None]) * BIG_NEG
        just = hits & top_k_mask[None, :]
        fin_cand = fin_cand + (~just) * BIG_NEG
        merged_scores = jnp.concatenate([c.fin_scores, fin_cand], axis=1)
        fin_scores, best = jax.lax.top_k(merged_scores, k)
        fin_seq = gather(jnp.concatenate([c.fin_seq, cand_seq], axis=1), best)
        fin_len = gather(jnp.concatenate([c.fin_len, jnp.full((b, keep), t + 1, jnp.int32)], axis=1), best)
        fin_done = gather(jnp.concatenate([c.fin_done, just], axis=1), best)
        state = model.reorder(state, rows_next)
        # HF's early-stop heuristic and loop condition.
        best_len = max_new if (early == "never" and alpha > 0.0) else t + 1
        best_possible = run_scores[:, :1] / jnp.asarray(best_len, jnp.float32) ** alpha
        worst = jnp.where(fin_done, jnp.min(fin_scores, axis=1, keepdims=True), BIG_NEG)
        improvable = c.improvable & jnp.any(best_possible > worst, axis=1)
        go_on = jnp.any(improvable) & ~(jnp.all(fin_done) & (early is True)) & ~jnp.all(hits) & (t + 1 < max_new)
        return _Beams(t + 1, state, seq_next, valid_next, run_scores, fin_seq, fin_scores, fin_len, fin_done,
                      improvable, go_on)

    scores0 = jnp.where(jnp.arange(k) == 0, 0.0, BIG_NEG)[None, :].repeat(b, axis=0).astype(jnp.float32)
    seq, valid = seq.reshape(b, k, s), valid.reshape(b, k, s)
    init = _Beams(jnp.int32(0), start.state, seq, valid, scores0, seq, jnp.full((b, k), BIG_NEG, jnp.float32),
                  jnp.zeros((b, k), jnp.int32), jnp.zeros((b, k), jnp.bool_), jnp.ones((b,), jnp.bool_),
                  jnp.bool_(True))
    out = jax.lax.while_loop(lambda c: c.go_on, body, init)
    n = settings.num_return_sequences
    tokens = out.fin_seq[:, :n, p:]
    lengths = out.fin_len[:, :n]
    tokens = jnp.where(jnp.arange(max_new)[None, None, :] < lengths[:, :, None], tokens, pad)
    return Output(tokens, lengths, out.fin_scores[:, :n])
