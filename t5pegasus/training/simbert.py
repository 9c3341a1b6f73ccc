"""SimBERT: the UniLM seq2seq loss plus an in-batch similarity loss of the sentence vectors (`objective.kind:
simbert`).

Each similar pair (a, b) enters a batch in both orders, `[CLS] a [SEP] b [SEP]` and `[CLS] b [SEP] a [SEP]`,
with `pair_ids` naming each row's pair (`t5pegasus.pretrain.groups.pair_rows`: the a->b rows first, then the
b->a rows; `simbert_batch` builds one from token ids). The loss of a BERT (`mask="unilm"`, the `simbert`
model kind) is

- seq2seq: next-token cross-entropy on the second segment (`losses.cross_entropy`, as the `unilm` objective),
- similarity: L2-normalise each row's sentence vector (the pooler output, or the [CLS] state without a pooler),
  S = scale * V V^T (scale 30) with the diagonal masked out, softmax cross-entropy of each row against its
  pair partner (the other row with its pair id; without pair ids, row i XOR 1), averaged over the rows,

total = seq2seq mean + similarity_weight * similarity. `simbert_loss` returns the total as `TokenSums`, the
form every objective's `loss` returns: the similarity term is folded into the loss sum scaled by the token
weight, so the trainer's `loss / weight` is the total while `correct` / `weight` stays the token accuracy.
The similarity term compares rows with each other, so it is a mean over a (micro-)batch, not a sum over
tokens: accumulated micro-batches average it weighted by their token counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    """A SimBERT batch from token-id pairs (without specials), as the data pipeline builds it: rows 0..P-1
    `[CLS] a [SEP] b [SEP]`, rows P..2P-1 `[CLS] b [SEP] a [SEP]`, with `ids`, `segment_ids`, `mask`, the
    `unilm` objective's `targets` / `weights` and `pair_ids` (`t5pegasus.pretrain.groups.pair_rows`)."""
    from t5pegasus.pretrain.groups import pair_rows

    return pair_rows(pairs, cls_id, sep_id, pad_id, max_length)


def sentence_vectors(out: BertOutput) -> Array:
    """The sentence vectors [b, d] of a BERT's output: the pooler output, or the [CLS] state without a pooler."""
    return out.hidden[:, 0] if out.pooled is None else out.pooled


def similarity_loss(vectors: Array, scale: float = SCALE, pair_ids: Array | None = None) -> tuple[Array, Array]:
    """In-batch similarity of sentence vectors [b, d]: rows with equal `pair_ids` ([b] or [b, 1]) are a pair
    (default: rows 2k and 2k+1).

    V = L2-normalised vectors, S = scale * V V^T with the diagonal masked out; softmax cross-entropy where row
    i's target is its partner. Returns (mean loss over the rows that have a partner, fraction of them picking
    their partner).
    """
    n = vectors.shape[0]
    if pair_ids is None:
        if n % 2:
            raise UserError(f"SimBERT batches hold pairs in both orders; got an odd batch of {n}")
        pair_ids = jnp.arange(n) // 2
    pair_ids = jnp.reshape(pair_ids, (n,))
    v = vectors.astype(jnp.float32)
    v = v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), 1e-12))
    scores = scale * (v @ v.T)
    eye = jnp.eye(n, dtype=bool)
    scores = jnp.where(eye, mask_value(jnp.float32), scores)
    same = (pair_ids[:, None] == pair_ids[None, :]) & ~eye
    has = jnp.any(same, axis=-1)
    partner = jnp.argmax(same, axis=-1)
    nll = jax.nn.logsumexp(scores, axis=-1) - scores[jnp.arange(n), partner]
    count = jnp.maximum(jnp.sum(has), 1)
    hit = jnp.argmax(scores, axis=-1) == partner
    return jnp.sum(jnp.where(has, nll, 0.0)) / count, jnp.sum(has & hit) / count


def with_similarity(sums: TokenSums, similarity: Array, similarity_weight: float = 1.0) -> TokenSums:
    """`sums` with `similarity_weight * similarity` (a per-batch mean) added per target token, so that
    loss / weight = the seq2seq mean + similarity_weight * similarity, and `aux` holds that term; z_loss,
    correct and weight unchanged."""
    term = similarity_weight * similarity * jnp.maximum(sums.weight, 1.0)
    return sums._replace(loss=sums.loss + term, aux=sums.aux + term)


def simbert_loss(logits: Array, vectors: Array, targets: Array, weights: Array | None, *, scale: float = SCALE,
                 similarity_weight: float = 1.0, label_smoothing: float = 0.0, z_loss: float = 0.0,
                 pair_ids: Array | None = None) -> tuple[TokenSums, dict[str, Array]]:
    """SimBERT's loss from a BERT's `logits` [b, n, vocab] and sentence vectors [b, d] (`sentence_vectors`)
    on a `simbert_batch` (`targets`, `weights` [b, n], `pair_ids` [b]; without them rows 2k, 2k+1 pair).

    Returns (the total as TokenSums, see `with_similarity`; metrics {seq2seq_loss (mean over target tokens),
    similarity_loss, similarity_accuracy}).
    """
    seq2seq = cross_entropy(logits, targets, weights, label_smoothing=label_smoothing, z_loss=z_loss)
    similarity, accuracy = similarity_loss(vectors, scale, pair_ids)
    metrics = {"seq2seq_loss": seq2seq.loss / jnp.maximum(seq2seq.weight, 1.0), "similarity_loss": similarity,
               "similarity_accuracy": accuracy}
    return with_similarity(seq2seq, similarity, similarity_weight), metrics


def objective_loss(out: BertOutput, batch: Mapping[str, Array], label_smoothing: float = 0.0,
                   z_loss: float = 0.0) -> TokenSums:
    """The `simbert` objective's loss (`training.objectives.KINDS`) of a BERT output on a batch of the
    `simbert` data task."""
    sums, _ = simbert_loss(out.logits, sentence_vectors(out), batch["targets"], batch.get("weights"),
                           label_smoothing=label_smoothing, z_loss=z_loss, pair_ids=batch.get("pair_ids"))
    return sums
