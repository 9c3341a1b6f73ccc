"""Token cross-entropy (optional label smoothing and z-loss) and accuracy, returned as sums.

Sums (not means) let micro-batches, shards and hosts be combined exactly: the trainer divides by the total
token weight once, so k accumulated micro-batches give the same update as one batch k times larger.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array


class TokenSums(NamedTuple):
    """Per-batch sums over weighted target tokens."""

    loss: Array  # cross-entropy (+ z-loss) summed over tokens, times their weights
    z_loss: Array  # the z-loss part of `loss`
    correct: Array  # weighted count of argmax == target
    weight: Array  # sum of the weights (number of target tokens)
    # an objective's own term in `loss`, summed per token like it (SimBERT's similarity loss; 0 otherwise), so
    # that its part of loss / weight can be logged on its own
    aux: Array


def cross_entropy(logits: Array, targets: Array, weights: Array | None = None, *, label_smoothing: float = 0.0,
                  z_loss: float = 0.0) -> TokenSums:
    """Cross-entropy of `logits` [..., vocab] against int `targets` [...], weighted by `weights` [...].

    Label smoothing spreads `label_smoothing` of the target mass uniformly over the vocabulary (the loss is
    shifted by the smoothed distribution's entropy, so a perfect prediction still scores 0). The z-loss adds
    `z_loss * logsumexp(logits)^2` per token (PaLM/T5X), which keeps the softmax normaliser near 1.
    """
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    weights = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    target_lp = target_logit - log_z  # no [..., vocab] log-probability tensor is materialised
    if label_smoothing > 0:
        on, off = 1.0 - label_smoothing, label_smoothing / vocab
        mean_lp = jnp.mean(logits, axis=-1) - log_z
        token_loss = -(on * target_lp + label_smoothing * mean_lp)
        # entropy of the smoothed target distribution: the loss of a perfect prediction
        on_p = on + off
        token_loss = token_loss + (on_p * jnp.log(on_p) + (vocab - 1) * off * jnp.log(off))
    else:
        token_loss = -target_lp
    z = z_loss * jnp.square(log_z) if z_loss > 0 else jnp.zeros_like(log_z)
    # argmax == target, read off the max the softmax needs anyway (one reduction over the vocabulary, not two;
    # an exact tie with another token counts as correct)
    correct = (target_logit >= jnp.max(logits, axis=-1)).astype(jnp.float32)
    return TokenSums(
        loss=jnp.sum((token_loss + z) * weights),
        z_loss=jnp.sum(z * weights),
        correct=jnp.sum(correct * weights),
        weight=jnp.sum(weights),
        aux=jnp.zeros((), jnp.float32),
    )
