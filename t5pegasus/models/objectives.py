"""Losses of the BERT/GPT families that a training loop can call: UniLM seq2seq, SimBERT, GPT next-token LM.

Every loss has the signature `loss(params, batch, model, *, rngs=None, deterministic=True) -> (scalar, metrics)`
with `metrics` a dict of scalars; it is differentiable in `params` and jit-able with `model` static. Batches
are dicts of int arrays as the data pipeline writes them:

- UniLM / SimBERT: `ids` [b, n] ([CLS] source [SEP] target [SEP] + padding), `segment_ids` (0 source,
  1 target); optional `mask` (real tokens; default ids != pad), `targets`/`weights` (default: the next token,
  weighted where it is target text), `condition` (conditional LayerNorm input).
- GPT LM: `ids`; optional `targets`/`weights` (default: next token, all positions but the last), `mask`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from t5pegasus.attention import mask_value
from t5pegasus.errors import UserError

Batch = Mapping[str, Array]


def token_cross_entropy(logits: Array, targets: Array, weights: Array) -> tuple[Array, dict[str, Array]]:
    """Weighted mean next-token cross-entropy (float32) and metrics {loss, accuracy, tokens}."""
    logits = logits.astype(jnp.float32)
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    w = weights.astype(jnp.float32)
    tokens = jnp.sum(w)
    loss = jnp.sum(nll * w) / jnp.maximum(tokens, 1.0)
    accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) * w) / jnp.maximum(tokens, 1.0)
    return loss, {"loss": loss, "accuracy": accuracy, "tokens": tokens}


def unilm_targets(batch: Batch, pad_token_id: int) -> tuple[Array, Array]:
    """(targets, weights) of a UniLM batch: position i predicts token i+1 where token i+1 is real target text."""
    if "targets" in batch:
        return batch["targets"], batch["weights"]
    ids, seg = batch["ids"], batch["segment_ids"]
    valid = batch["mask"].astype(bool) if "mask" in batch else ids != pad_token_id
    targets = jnp.pad(ids[:, 1:], ((0, 0), (0, 1)), constant_values=pad_token_id)
    weights = jnp.pad((seg[:, 1:] > 0) & valid[:, 1:], ((0, 0), (0, 1)))
    return targets, weights.astype(jnp.int32)


def _bert_outputs(params: Any, batch: Batch, model: Any, rngs: Any, deterministic: bool) -> Any:
    if model.cfg.attention != "unilm":
        raise UserError(f"the UniLM/SimBERT loss needs a BERT with attention='unilm', not {model.cfg.attention!r}")
    return model.apply({"params": params}, batch["ids"], batch["segment_ids"], batch.get("mask"),
                       batch.get("condition"), deterministic=deterministic, rngs=rngs)


def unilm_loss(params: Any, batch: Batch, model: Any, *, rngs: Any = None,
               deterministic: bool = True) -> tuple[Array, dict[str, Array]]:
    """UniLM seq2seq loss: next-token cross-entropy on target positions only (model: `Bert`, unilm mode)."""
    out = _bert_outputs(params, batch, model, rngs, deterministic)
    targets, weights = unilm_targets(batch, model.cfg.pad_token_id)
    return token_cross_entropy(out.logits, targets, weights)


def similarity_loss(vectors: Array, scale: float = 30.0) -> tuple[Array, Array]:
    """SimBERT in-batch similarity: rows 2k and 2k+1 are a pair (the same pair in both orders).

    V = L2-normalised vectors, S = V V^T with the diagonal masked out, scaled; softmax cross-entropy where row
    i's target is its partner i XOR 1. Returns (mean loss, accuracy of picking the partner).
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


def simbert_loss(params: Any, batch: Batch, model: Any, *, rngs: Any = None, deterministic: bool = True,
                 scale: float = 30.0, similarity_weight: float = 1.0) -> tuple[Array, dict[str, Array]]:
    """SimBERT: UniLM seq2seq loss + `similarity_weight` x in-batch similarity loss of the sentence vectors.

    The sentence vector is the pooler output (linear in the `simbert-base` preset), or the [CLS] state if the
    model has no pooler. Build batches with `simbert_batch`.
    """
    out = _bert_outputs(params, batch, model, rngs, deterministic)
    targets, weights = unilm_targets(batch, model.cfg.pad_token_id)
    seq2seq, metrics = token_cross_entropy(out.logits, targets, weights)
    vectors = out.hidden[:, 0] if out.pooled is None else out.pooled
    similarity, sim_accuracy = similarity_loss(vectors, scale)
    loss = seq2seq + similarity_weight * similarity
    return loss, {**metrics, "loss": loss, "seq2seq_loss": seq2seq, "similarity_loss": similarity,
                  "similarity_accuracy": sim_accuracy}


def simbert_batch(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], cls_id: int, sep_id: int, pad_id: int,
                  max_length: int | None = None) -> dict[str, np.ndarray]:
    """A SimBERT batch from token-id pairs (without specials): rows 2k, 2k+1 = `[CLS] a [SEP] b [SEP]` and
    `[CLS] b [SEP] a [SEP]` with segment ids 0 then 1; right-padded (and truncated to `max_length`)."""
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
    return {"ids": ids, "segment_ids": seg, "mask": (np.arange(n)[None] < np.array([len(r) for r in rows])[:, None])
            .astype(np.int32)}


def lm_loss(params: Any, batch: Batch, model: Any, *, rngs: Any = None,
            deterministic: bool = True) -> tuple[Array, dict[str, Array]]:
    """GPT next-token loss (model: `GPT`); default targets are ids shifted by one, weighted by the mask."""
    ids = batch["ids"]
    mask = batch.get("mask")
    logits = model.apply({"params": params}, ids, mask, deterministic=deterministic, rngs=rngs)
    if "targets" in batch:
        targets, weights = batch["targets"], batch.get("weights", jnp.ones_like(batch["targets"]))
    else:
        valid = jnp.ones(ids.shape, bool) if mask is None else mask.astype(bool)
        targets = jnp.pad(ids[:, 1:], ((0, 0), (0, 1)))
        weights = jnp.pad(valid[:, 1:] & valid[:, :-1], ((0, 0), (0, 1))).astype(jnp.int32)
    return token_cross_entropy(logits, targets, weights)
