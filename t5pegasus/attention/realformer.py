"""RealFormer residual attention: layer l's pre-softmax scores add layer l-1's.

scores_l = scale * q_l k_l^T + bias + scores_{l-1};  out_l = softmax(scores_l, masked) v_l.
The returned scores are unmasked (masking happens inside each layer), so the residual stream carries only
real scores. A model threads them through its layer stack: the first layer passes prev_scores=None and
each layer hands its returned scores to the next (a scan over layers carries them like the hidden state).
The bias is part of the scores, so a bias given to every layer accumulates along the stack; that is the
RealFormer definition applied to T5's shared relative bias.
"""

from __future__ import annotations

from jax import Array

from t5pegasus.attention.dot_product import attention_from_scores, attention_scores


def residual_attention(
    q: Array,
    k: Array,
    v: Array,
    prev_scores: Array | None = None,
    bias: Array | None = None,
    mask: Array | None = None,
    scale: float | None = None,
) -> tuple[Array, Array]:
    """(out [b, q, h, d], scores [b, h, q, k] float32) with scores = scale q k^T + bias + prev_scores."""
    scores = attention_scores(q, k, scale)
    if bias is not None:
        scores = scores + bias.astype(scores.dtype)
    if prev_scores is not None:
        scores = scores + prev_scores.astype(scores.dtype)
    return attention_from_scores(scores, v, None, mask, dtype=q.dtype), scores
