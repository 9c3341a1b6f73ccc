"""SimBERT / UniLM losses of the training stack: what they compute, that they point the right way, finite
gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import t5pegasus as tp
from t5pegasus.training.objectives import make_objective
from t5pegasus.training.simbert import sentence_vectors, simbert_batch, simbert_loss, similarity_loss


def mean_loss(sums):
    """What the trainer reports for a batch's TokenSums: the loss sum over the token weight."""
    return sums.loss / jnp.maximum(sums.weight, 1.0)


def test_similarity_loss_formula():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(6, 5))
    loss, _ = similarity_loss(jnp.asarray(v, jnp.float32), scale=30.0)
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    s = 30 * u @ u.T
    np.fill_diagonal(s, -np.inf)
    logp = s - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)) - s.max(1, keepdims=True)
    want = -np.mean([logp[i, i ^ 1] for i in range(6)])
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_similarity_loss_is_minimised_by_equal_pair_vectors():
    """Each pair mapped to one vector (pairs far apart) is near zero loss; anything else costs more."""
    pairs = np.eye(4, 8)  # four orthogonal directions
    same = np.repeat(pairs, 2, axis=0)  # rows 2k, 2k+1 identical
    best, best_acc = similarity_loss(jnp.asarray(same, jnp.float32))
    assert float(best) < 1e-6 and float(best_acc) == 1.0
    rng = np.random.default_rng(0)
    random = similarity_loss(jnp.asarray(rng.normal(size=(8, 8)), jnp.float32))[0]
    wrong = similarity_loss(jnp.asarray(same[[0, 2, 1, 4, 3, 6, 5, 7]], jnp.float32))[0]  # partners swapped
    assert float(random) > 1.0 and float(wrong) > 10.0
    with pytest.raises(tp.UserError, match="odd"):
        similarity_loss(jnp.ones((3, 4)))


def test_simbert_batch_layout():
    """Both orders of every pair; the a->b rows first, then the b->a rows, so row i pairs with row i + P."""
    batch = simbert_batch([([5, 6], [7]), ([8], [9, 10, 11])], cls_id=2, sep_id=3, pad_id=0)
    assert batch["ids"].tolist() == [[2, 5, 6, 3, 7, 3, 0], [2, 8, 3, 9, 10, 11, 3],
                                     [2, 7, 3, 5, 6, 3, 0], [2, 9, 10, 11, 3, 8, 3]]
    assert batch["segment_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1],
                                             [0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1]]
    assert batch["mask"].sum(1).tolist() == [6, 7, 6, 7]
    assert batch["pair_ids"][:, 0].tolist() == [0, 1, 0, 1]
    # The unilm objective's fields, as the data pipeline writes them: the next token, weighted where it is
    # second-segment text.
    assert batch["targets"].tolist() == [[5, 6, 3, 7, 3, 0, 0], [8, 3, 9, 10, 11, 3, 0],
                                         [7, 3, 5, 6, 3, 0, 0], [9, 10, 11, 3, 8, 3, 0]]
    assert batch["weights"].tolist() == [[0, 0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0],
                                         [0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0]]


def test_similarity_loss_with_pair_ids_is_the_formula_for_any_row_order():
    """Pair ids name the partners; shuffling the rows (ids along) changes nothing, and it equals the
    interleaved default on the interleaved order."""
    rng = np.random.default_rng(1)
    v = rng.normal(size=(8, 5)).astype(np.float32)
    pair = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    loss, acc = similarity_loss(jnp.asarray(v), pair_ids=jnp.asarray(pair))
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    s = 30.0 * u.astype(np.float64) @ u.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    logp = s - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)) - s.max(1, keepdims=True)
    partner = [(i + 4) % 8 for i in range(8)]
    np.testing.assert_allclose(float(loss), -np.mean([logp[i, partner[i]] for i in range(8)]), rtol=1e-5)
    np.testing.assert_allclose(float(acc), np.mean([np.argmax(s[i]) == partner[i] for i in range(8)]))
    order = rng.permutation(8)
    again, _ = similarity_loss(jnp.asarray(v[order]), pair_ids=jnp.asarray(pair[order]))
    np.testing.assert_allclose(float(again), float(loss), rtol=1e-5)
    inter = np.array([0, 4, 1, 5, 2, 6, 3, 7])
    np.testing.assert_allclose(float(similarity_loss(jnp.asarray(v[inter]))[0]), float(loss), rtol=1e-5)


def test_simbert_loss_gradient_and_direction():
    cfg = tp.BertConfig.preset("tiny", attention="unilm", pooler_activation="linear")
    model = tp.models.Bert(cfg)
    rng = np.random.default_rng(0)
    pairs = [(list(rng.integers(5, 100, 4)), list(rng.integers(5, 100, 3))) for _ in range(3)]
    batch = {k: jnp.asarray(v) for k, v in simbert_batch(pairs, 2, 3, 0).items()}
    params = tp.models.unbox(jax.jit(model.init)(jax.random.key(0), batch["ids"], batch["segment_ids"])["params"])

    def loss_fn(p):
        out = model.apply({"params": p}, batch["ids"], batch["segment_ids"], batch["mask"])
        sums, metrics = simbert_loss(out.logits, sentence_vectors(out), batch["targets"], batch["weights"],
                                     pair_ids=batch["pair_ids"])
        return mean_loss(sums), {**metrics, "tokens": sums.weight, "aux": sums.aux / sums.weight}

    value_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, metrics), grads = value_and_grad(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.isfinite(g).all()) for g in leaves) and any(bool(jnp.any(g != 0)) for g in leaves)
    np.testing.assert_allclose(float(loss), float(metrics["seq2seq_loss"] + metrics["similarity_loss"]), rtol=1e-6)
    # the sums carry the similarity term on its own (`aux`), which the trainer logs as similarity_loss
    np.testing.assert_allclose(float(metrics["aux"]), float(metrics["similarity_loss"]), rtol=1e-6)
    assert float(metrics["similarity_loss"]) > 0.1
    # The seq2seq part is exactly the UniLM loss, counted on the second segment's tokens only.
    assert int(metrics["tokens"]) == int(batch["segment_ids"].sum())
    unilm = make_objective("unilm", cfg).loss(params, batch, deterministic=True)
    np.testing.assert_allclose(float(metrics["seq2seq_loss"]), float(mean_loss(unilm)), rtol=1e-6)
    # A few gradient steps lower both parts: the gradient points the right way.
    p = params
    for _ in range(5):
        (_, _), g = value_and_grad(p)
        p = jax.tree_util.tree_map(lambda x, d: x - 0.5 * d, p, g)
    (_, after), _ = value_and_grad(p)
    assert float(after["similarity_loss"]) < float(metrics["similarity_loss"])
    assert float(after["seq2seq_loss"]) < float(metrics["seq2seq_loss"])


def test_unilm_loss_counts_target_positions_only():
    cfg = tp.BertConfig.preset("tiny", attention="unilm")
    model = tp.models.Bert(cfg)
    ids = jnp.asarray([[2, 11, 12, 3, 21, 22, 3, 0], [2, 13, 3, 23, 3, 0, 0, 0]], jnp.int32)
    seg = jnp.asarray([[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0, 0]], jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), ids, seg)["params"]
    # The pipeline's format: position i predicts token i+1, weighted where token i+1 is target text.
    targets = jnp.pad(ids[:, 1:], ((0, 0), (0, 1)))
    weights = jnp.pad(seg[:, 1:], ((0, 0), (0, 1)))
    unilm = make_objective("unilm", cfg)
    sums = unilm.loss(params, {"ids": ids, "segment_ids": seg, "targets": targets, "weights": weights},
                      deterministic=True)
    logits = np.asarray(jax.jit(model.apply)({"params": params}, ids, seg).logits, np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    # position i predicts token i+1 when i+1 is target text: row 0 predicts 21, 22, [SEP]; row 1 23, [SEP]
    picked = [logp[0, 3, 21], logp[0, 4, 22], logp[0, 5, 3], logp[1, 2, 23], logp[1, 3, 3]]
    assert int(sums.weight) == 5
    np.testing.assert_allclose(float(mean_loss(sums)), -np.mean(picked), rtol=1e-5)
    # Weights that also exclude padding explicitly (a `mask`) give the same loss: padding is segment 0.
    valid = ids != cfg.pad_token_id
    masked = jnp.pad((seg[:, 1:] > 0) & valid[:, 1:], ((0, 0), (0, 1))).astype(jnp.int32)
    again = unilm.loss(params, {"ids": ids, "segment_ids": seg, "targets": targets, "weights": masked},
                       deterministic=True)
    np.testing.assert_allclose(float(mean_loss(again)), float(mean_loss(sums)), rtol=1e-6)


def test_simbert_objective_is_the_formula_on_a_hand_made_batch():
    """objective.kind=simbert: loss / weight = mean next-token NLL over second-segment tokens + the in-batch
    similarity cross-entropy (normalised pooled vectors, scale 30, diagonal out, partner = same pair id),
    computed here in float64 numpy from the model's own logits and pooled vectors."""
    cfg = tp.BertConfig.preset("tiny", mask="unilm", pooler_activation="linear")
    obj = make_objective("simbert", cfg)
    batch = simbert_batch([([5, 6, 7], [8, 9]), ([10], [11, 12, 13]), ([14, 15], [16])], 2, 3, 0)
    batch = {k: jnp.asarray(v) for k, v in batch.items() if k != "mask"}
    params = obj.init(jax.random.key(1), batch)
    sums = obj.loss(params, batch, deterministic=True)
    out = obj.model.apply({"params": params}, batch["ids"], batch["segment_ids"])
    logits, pooled = np.asarray(out.logits, np.float64), np.asarray(out.pooled, np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    w = np.asarray(batch["weights"]).astype(bool)
    t = np.asarray(batch["targets"])
    seq2seq = -np.mean([logp[i, j, t[i, j]] for i, j in zip(*np.nonzero(w), strict=True)])
    u = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    s = 30.0 * u @ u.T
    np.fill_diagonal(s, -np.inf)
    ls = s - s.max(1, keepdims=True)
    ls = ls - np.log(np.exp(ls).sum(1, keepdims=True))
    similarity = -np.mean([ls[i, (i + 3) % 6] for i in range(6)])  # rows 0-2 a->b, 3-5 b->a
    assert int(sums.weight) == int(w.sum()) == 2 * (3 + 4 + 2)
    np.testing.assert_allclose(float(sums.loss / sums.weight), seq2seq + similarity, rtol=1e-5)
    # the simbert objective refuses a BERT without the UniLM mask, like unilm
    with pytest.raises(tp.UserError, match="needs mask='unilm'"):
        make_objective("simbert", tp.BertConfig.preset("tiny"))
