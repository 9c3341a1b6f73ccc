"""SimBERT: the UniLM seq2seq loss plus an in-batch similarity loss of the sentence vectors.

Each similar pair (a, b) enters a batch in both orders, rows 2k = `[CLS] a [SEP] b [SEP]` and
2k+1 = `[CLS] b [SEP] a [SEP]` (`simbert_batch`). The loss of a BERT (`mask="unilm"`, the `simbert-base`
preset) is

- seq2seq: next-token cross-entropy on the second segment (`losses.cross_entropy`, as the `unilm` objective),
- similarity: L2-normalise each row's sentence vector (the pooler output, or the [CLS] state without a pooler),
  S = scale * V V^T (scale 30) with the diagonal masked out, softmax cross-entropy of each row against its
  pair partner (row i XOR 1), averaged over the rows,

total = seq2seq mean + similarity_weight * similarity. `simbert_loss` returns the total as `TokenSums`, the
form every objective's `loss` returns: the similarity term is folded into the loss sum scaled by the token
weight, so the trainer's `loss / weight` is the total while `correct` / `weight` stays the token accuracy.
The similarity term compares rows with each other, so it is a mean over a (micro-)batch, not a sum over
tokens: accumulated micro-batches average it weighted by their token counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from t5pegasus.attention import mask_value
from t5pegasus.errors import UserError
from t5pegasus.training.losses import TokenSums, cross_entropy

if TYPE_CHECKING:
    from t5pegasus.models.bert import BertOutput

SCALE = 30.0


def simbert_batch(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], cls_id: int, sep_id: int, pad_id: int,
                  max_length: int | None = None) -> dict[str, np.ndarray]:
    """A SimBERT batch from token-id pairs (without specials): rows 2k, 2k+1 = `[CLS] a [SEP] b [SEP]` and
    `[CLS] b [SEP] a [SEP]` with segment ids 0 then 1; right-padded with `pad_id` (segment 0) and truncated to
    `max_length`. Fields: `ids`, `segment_ids`, `mask` (real tokens) and the `unilm` objective's `targets`
    (the next token) and `weights` (1 where that next token is second-segment text), all int32 [2 * pairs, n].
    """
    rows, segs = [], []
    for a, b in pairs:
        for x, y in ((a, b), (b, a)):
            first, second = [cls_id, *x, sep_id], [*y, sep_id]
            rows.append(first + second)
            segs.append([0] * len(first) + [1] * len(second))
    n = max(map(len, rows)) if max_length is None else max_length
    ids = np.full((len(rows), n), pad_id, np.int32)
    seg = np.zeros((len(rows), n), np.int32)
    for i, (r, s) in enumerate(zip(rows, segs, strict=True)):
        ids[i, :min(n, len(r))], seg[i, :min(n, len(s))] = r[:n], s[:n]
    mask = (np.arange(n)[None] < np.array([len(r) for r in rows])[:, None]).astype(np.int32)
    # position i predicts token i + 1 where that token is real target text (as the data pipeline's unilm rows)
    targets = np.pad(ids[:, 1:], ((0, 0), (0, 1)), constant_values=pad_id)
    weights = np.pad((seg[:, 1:] > 0) & (mask[:, 1:] > 0), ((0, 0), (0, 1))).astype(np.int32)
    return {"ids": ids, "segment_ids": seg, "mask": mask, "targets": targets, "weights": weights}


def sentence_vectors(out: BertOutput) -> Array:
    """The sentence vectors [b, d] of a BERT's output: the pooler output, or the [CLS] state without a pooler."""
    return out.hidden[:, 0] if out.pooled is None else out.pooled


def similarity_loss(vectors: Array, scale: float = SCALE) -> tuple[Array, Array]:
    """In-batch similarity of sentence vectors [2k, d] whose rows 2k and 2k+1 are a pair.

    V = L2-normalised vectors, S = scale * V V^T with the diagonal masked out; softmax cross-entropy where row
    i's target is its partner i XOR 1. Returns (mean loss over rows, fraction of rows picking their partner).
    """
    n = vectors.shape[0]
    if n % 2:
        raise UserError(f"SimBERT batches hold pairs in both orders; got an odd batch of {n}")
    v = vectors.astype(jnp.float32)
    v = v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), 1e-12))
    scores = scale * (v @ v.T)
    scores = jnp.where(jnp.eye(n, dtype=bool), mask_value(jnp.float32), scores)
    partner = jnp.arange(n) ^ 1
    nll = jax.nn.logsumexp(scores, axis=-1) - scores[jnp.arange(n), partner]
    return jnp.mean(nll), jnp.mean(jnp.argmax(scores, axis=-1) == partner)


def with_similarity(sums: TokenSums, similarity: Array, similarity_weight: float = 1.0) -> TokenSums:
    """`sums` with `similarity_weight * similarity` (a per-batch mean) added per target token, so that
    loss / weight = the seq2seq mean + similarity_weight * similarity; z_loss, correct and weight unchanged."""
    return sums._replace(loss=sums.loss + similarity_weight * similarity * jnp.maximum(sums.weight, 1.0))


def simbert_loss(logits: Array, vectors: Array, targets: Array, weights: Array | None, *, scale: float = SCALE,
                 similarity_weight: float = 1.0, label_smoothing: float = 0.0,
                 z_loss: float = 0.0) -> tuple[TokenSums, dict[str, Array]]:
    """SimBERT's loss from a BERT's `logits` [b, n, vocab] and sentence vectors [b, d] (`sentence_vectors`)
    on a `simbert_batch` (`targets`, `weights` [b, n]).

    Returns (the total as TokenSums, see `with_similarity`; metrics {seq2seq_loss (mean over target tokens),
    similarity_loss, similarity_accuracy}).
    """
    seq2seq = cross_entropy(logits, targets, weights, label_smoothing=label_smoothing, z_loss=z_loss)
    similarity, accuracy = similarity_loss(vectors, scale)
    metrics = {"seq2seq_loss": seq2seq.loss / jnp.maximum(seq2seq.weight, 1.0), "similarity_loss": similarity,
               "similarity_accuracy": accuracy}
    return with_similarity(seq2seq, similarity, similarity_weight), metrics
