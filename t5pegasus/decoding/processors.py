"""Per-step score processing, vectorised over the batch and traceable inside the decoding loop.

`seq` is each row's token buffer [rows, length] (prefix then generated tokens), `valid` marks its filled
positions and `cur` (a traced scalar) is the number of positions filled so far (prefix included).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array

from t5pegasus.decoding.settings import Settings

NEG_INF = -jnp.inf


def greedy_token(scores: Array) -> Array:
    """jnp.argmax over the last axis (the first maximum; a NaN counts as the maximum), as a max and a min
    reduction: XLA:CPU runs those vectorised, its (value, index) argmax reduction about 3x slower."""
    top = jnp.max(scores, axis=-1, keepdims=True)
    hit = (scores == top) | jnp.isnan(scores)
    return jnp.min(jnp.where(hit, jnp.arange(scores.shape[-1]), scores.shape[-1]), axis=-1)


def _seen(seq: Array, valid: Array, vocab: int) -> Array:
    """[rows, vocab] bool: which tokens occur at valid positions of each row."""
    rows = jnp.arange(seq.shape[0])[:, None]
    return jnp.zeros((seq.shape[0], vocab), jnp.bool_).at[rows, seq].max(valid)


def repetition_penalty(scores: Array, seq: Array, valid: Array, penalty: float) -> Array:
    """HF/CTRL penalty: a seen token's score is divided by `penalty` if positive, multiplied if negative."""
    seen = _seen(seq, valid, scores.shape[-1])
    return jnp.where(seen, jnp.where(scores < 0, scores * penalty, scores / penalty), scores)


def banned_ngram_tokens(seq: Array, valid: Array, cur: Array, n: int, vocab: int) -> Array:
    """[rows, vocab] bool: tokens that would repeat an n-gram already in the first `cur` positions (HF rule)."""
    length = seq.shape[1]
    if n > length:
        return jnp.zeros((seq.shape[0], vocab), jnp.bool_)
    starts = length - n + 1
    idx = jnp.arange(starts)
    match = (idx + n - 1 < cur)[None, :] & (cur + 1 >= n)
    for k in range(n):
        match = match & valid[:, k:k + starts]
    for k in range(n - 1):  # the window's first n-1 tokens equal the sequence's last n-1 tokens
        last_k = jnp.take(seq, jnp.clip(cur - n + 1 + k, 0, length - 1), axis=1)
        match = match & (seq[:, k:k + starts] == last_k[:, None])
    rows = jnp.arange(seq.shape[0])[:, None]
    return jnp.zeros((seq.shape[0], vocab), jnp.bool_).at[rows, seq[:, n - 1:n - 1 + starts]].max(match)


def constrain(scores: Array, seq: Array, valid: Array, cur: Array, step: Array, settings: Settings,
              eos_token_id: int) -> Array:
    """Repetition penalty, no-repeat-n-gram and minimum length, in HF's order (logits or log-probs)."""
    if settings.repetition_penalty != 1.0:
        scores = repetition_penalty(scores, seq, valid, settings.repetition_penalty)
    if settings.no_repeat_ngram_size > 0:
        banned = banned_ngram_tokens(seq, valid, cur, settings.no_repeat_ngram_size, scores.shape[-1])
        scores = jnp.where(banned, NEG_INF, scores)
    if settings.min_new_tokens > 0:
        scores = scores.at[:, eos_token_id].set(
            jnp.where(step < settings.min_new_tokens, NEG_INF, scores[:, eos_token_id]))
    return scores


def support(logits: Array, settings: Settings, eos_token_id: int) -> Array:
    """Temperature, then top-k, then top-p (HF's order), keeping the end token a candidate throughout.

    Returns the logits to sample from: -inf outside the support.
    """
    logits = logits / settings.temperature if settings.temperature != 1.0 else logits
    vocab = logits.shape[-1]
    is_eos = jnp.arange(vocab) == eos_token_id
    if 0 < settings.top_k < vocab:
        kth = jax.lax.top_k(logits, settings.top_k)[0][:, -1:]
        logits = jnp.where((logits >= kth) | is_eos, logits, NEG_INF)
    if settings.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
        keep_sorted = before < settings.top_p  # smallest prefix reaching top_p; the top token always stays
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep | is_eos, logits, NEG_INF)
    return logits
