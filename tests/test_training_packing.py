"""Packing: a batch of examples packed several to a row gives the same summed loss and gradients as the same
examples one per row (T5 seq2seq with the T5 PEGASUS cross-attention bias, GPT lm); the loader's packed rows
unpack to the examples they hold; the pretrain loop trains on packed rows and resumes them exactly; UniLM and
the mask-free attention kinds are refused when the config is read."""

import jax
import numpy as np
import pytest

import t5pegasus as tp
from t5pegasus.errors import UserError
from t5pegasus.training import runconfig
from t5pegasus.training.objectives import make_objective
from tests import tiny_run

SEQ2SEQ_ROWS = {"source": 40, "target": 16}  # packed row lengths; examples are at most 20 / 8 long


def seq2seq_examples(n, rng, vocab=128):
    return [{"encoder_ids": rng.integers(1, vocab, int(rng.integers(3, 21))),
             "decoder_ids": rng.integers(1, vocab, t := int(rng.integers(2, 9))),
             "targets": rng.integers(1, vocab, t)} for _ in range(n)]


def lm_examples(n, rng, vocab=128):
    out = []
    for _ in range(n):
        seq = rng.integers(1, vocab, int(rng.integers(3, 17)))
        out.append({"ids": seq[:-1], "targets": seq[1:]})
    return out


def _fill(arrays, length):
    out = np.zeros((len(arrays), length), np.int32)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def one_per_row(examples, side_of, lengths):
    """Padded rows, one example each, with the loader's masks (encoder_mask, weights)."""
    batch = {f: _fill([e[f] for e in examples], lengths[side_of[f]]) for f in examples[0]}
    if "encoder_ids" in batch:
        batch["encoder_mask"] = _fill([np.ones(len(e["encoder_ids"])) for e in examples], lengths["source"])
    batch["weights"] = _fill([np.ones(len(e["targets"])) for e in examples], lengths[side_of["targets"]])
    return batch


def packed_rows(examples, groups, side_of, rows):
    """Rows holding `groups` of examples back to back, with segment ids (1, 2, ... per example, 0 = padding) and
    positions from 0 per example for each side, as the loader's packed batches have them."""
    sides = {side: [f for f in examples[0] if side_of[f] == side] for side in set(side_of.values())}
    prefix = {"source": "encoder_", "target": "decoder_", "length": ""}
    batch = {f: [] for f in examples[0]}
    extra = {}
    for group in groups:
        for side, fields in sides.items():
            for f in fields:
                batch[f].append(np.concatenate([examples[i][f] for i in group]))
            lens = [len(examples[i][fields[0]]) for i in group]
            extra.setdefault(f"{prefix[side]}segment_ids", []).append(
                np.concatenate([np.full(n, s + 1) for s, n in enumerate(lens)]))
            extra.setdefault(f"{prefix[side]}positions", []).append(np.concatenate([np.arange(n) for n in lens]))
    side_of = {**side_of, **{k: ("length" if not k.startswith(("encoder", "decoder")) else
                                 "source" if k.startswith("encoder") else "target") for k in extra}}
    out = {f: _fill(v, rows[side_of[f]]) for f, v in {**batch, **extra}.items()}
    if "encoder_ids" in out:
        out["encoder_mask"] = (out["encoder_segment_ids"] > 0).astype(np.int32)
        out["weights"] = (out["decoder_segment_ids"] > 0).astype(np.int32)
    else:
        out["weights"] = (out["segment_ids"] > 0).astype(np.int32)
    return out


def loss_and_grads(objective, params, batch):
    fields = {f: np.asarray(batch[f]) for f in objective.fields}

    def total(p):
        sums = objective.loss(p, fields, None, deterministic=True)
        return sums.loss, sums

    grads, sums = jax.grad(total, has_aux=True)(params)
    return jax.device_get(sums), jax.device_get(grads)


def assert_same(got, want, tol=1e-5):
    (gs, gg), (ws, wg) = got, want
    np.testing.assert_allclose(float(gs.weight), float(ws.weight), rtol=0)
    np.testing.assert_allclose(float(gs.loss), float(ws.loss), rtol=tol)
    np.testing.assert_allclose(float(gs.correct), float(ws.correct), rtol=0)
    # relative to the gradient's scale: some leaves' true gradient is 0 (a key bias shifts every score of a
    # query alike), where both sides hold float noise
    scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(wg))
    for a, b in zip(jax.tree.leaves(gg), jax.tree.leaves(wg), strict=True):
        assert np.abs(a - b).max() <= tol * scale


def groups_of(examples, side_of, rows):
    """Greedy first-fit of examples into rows (every side within its row length)."""
    sides = {side: next(f for f in examples[0] if side_of[f] == side) for side in set(side_of.values())}
    groups, used = [], []
    for i, e in enumerate(examples):
        need = {side: len(e[f]) for side, f in sides.items()}
        for g, u in zip(groups, used, strict=True):
            if all(u[s] + need[s] <= rows[s] for s in need):
                g.append(i)
                for s in need:
                    u[s] += need[s]
                break
        else:
            groups.append([i])
            used.append(dict(need))
    return groups


@pytest.mark.parametrize("family", ["t5", "gpt"])
def test_packed_rows_give_the_unpacked_loss_and_gradients(family):
    rng = np.random.default_rng(0)
    if family == "t5":  # the T5 PEGASUS switches: the cross-attention bias must see each example's positions
        cfg = tp.T5Config.preset("tiny", cross_attention_bias=True, scale_logits=True, tie_word_embeddings=False,
                                 feed_forward="gated-gelu-erf")
        kind, examples = "seq2seq", seq2seq_examples(12, rng)
        side_of = {"encoder_ids": "source", "decoder_ids": "target", "targets": "target"}
        unpacked_lengths, rows = {"source": 20, "target": 8}, SEQ2SEQ_ROWS
    else:  # learned absolute positions: they must restart per example
        cfg = tp.GPTConfig.preset("tiny")
        kind, examples = "lm", lm_examples(12, rng)
        side_of = {"ids": "length", "targets": "length"}
        unpacked_lengths, rows = {"length": 16}, {"length": 48}
    plain = make_objective(kind, cfg)
    packed = make_objective(kind, cfg, packed=True)
    one = one_per_row(examples, side_of, unpacked_lengths)
    groups = groups_of(examples, side_of, rows)
    assert len(groups) < len(examples) / 2  # rows really hold several examples
    many = packed_rows(examples, groups, side_of, rows)
    params = plain.init(jax.random.key(1), one)
    want = loss_and_grads(plain, params, one)
    assert_same(loss_and_grads(packed, params, many), want)
    # the same rows read without their segment ids let examples see each other: the loss changes
    leaky = loss_and_grads(plain, params, {k: v for k, v in many.items() if "segment" not in k and "pos" not in k})
    assert abs(float(leaky[0].loss) - float(want[0].loss)) > 1e-3 * abs(float(want[0].loss))


def unpack(batch):
    """The examples a loader batch of packed seq2seq rows holds, by segment id."""
    out = []
    for r in range(batch["encoder_ids"].shape[0]):
        enc, dec = batch["encoder_segment_ids"][r], batch["decoder_segment_ids"][r]
        for s in range(1, int(enc.max()) + 1):
            out.append({"encoder_ids": batch["encoder_ids"][r][enc == s],
                        "decoder_ids": batch["decoder_ids"][r][dec == s], "targets": batch["targets"][r][dec == s]})
            assert (batch["encoder_positions"][r][enc == s] == np.arange((enc == s).sum())).all()
            assert (batch["decoder_positions"][r][dec == s] == np.arange((dec == s).sum())).all()
    return out


# ---- the loader and the loop ----

STEPS = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_run.write_corpus(tmp_path_factory.mktemp("corpus"))


def overrides(corpus, out, name, **extra):
    return tiny_run.overrides(corpus, out, name, **{
        "model.cross_attention_bias": True, "data.pack": "{source: 144, target: 48}", "train.steps": STEPS,
        "train.log_every": 1, "checkpoint.every": 2, "eval.every": 2, "eval.batches": 1, **extra})


@pytest.fixture(scope="module")
def packed_run(corpus, tmp_path_factory):
    from t5pegasus.training.loop import train

    out = tmp_path_factory.mktemp("runs")
    result = train(runconfig.load(None, overrides(corpus, out, "straight")))
    return out, result


def final_params(run_dir, step):
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as c:
        return c.restore(run_dir / "checkpoints" / str(step) / "state")["params"]


def test_pretrain_loop_trains_on_packed_rows(packed_run):
    import json

    _, result = packed_run
    assert result.final_step == STEPS and result.last_eval is not None
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["kind"] == "train"]
    assert len(train_lines) == STEPS and all(np.isfinite(x["loss"]) for x in train_lines)
    held_out = [x["loss"] for x in lines if x["kind"] == "eval"]
    assert len(held_out) == 2 and held_out[1] < held_out[0]  # it learns (per-batch losses are too noisy here)
    assert {"tokens_per_s", "data_wait"} <= set(train_lines[-1])


def test_loader_rows_unpack_to_their_examples_with_the_same_loss(packed_run):
    from t5pegasus.pretrain.loader import make_dataset

    _, result = packed_run
    data = _cache_dirs(result)[0]
    batch = next(make_dataset(data, batch_size=4, seed=0, process_index=0, process_count=1, max_source_len=48,
                              max_target_len=16, pack=True, pack_lengths={"source": 144, "target": 48}))
    examples = unpack(batch)
    assert len(examples) >= 8  # several per row
    cfg = tp.T5Config.preset("tiny", cross_attention_bias=True, vocab_size=640)
    side_of = {"encoder_ids": "source", "decoder_ids": "target", "targets": "target"}
    plain, packed = make_objective("seq2seq", cfg), make_objective("seq2seq", cfg, packed=True)
    one = one_per_row(examples, side_of, {"source": 48, "target": 16})
    params = plain.init(jax.random.key(0), one)
    assert_same(loss_and_grads(packed, params, batch), loss_and_grads(plain, params, one))


def _cache_dirs(result):
    """The prepared train datasets of the run's data cache."""
    from pathlib import Path

    import yaml

    cache = yaml.safe_load((result.run_dir / "config.yaml").read_text())["data"]["cache_dir"]
    return sorted(Path(cache).glob("data-*/train"))


def test_packed_run_resumes_exactly(corpus, packed_run, tmp_path):
    from t5pegasus.training.loop import train

    out, _ = packed_run
    half = train(runconfig.load(None, overrides(corpus, tmp_path, "resumed", **{"train.steps": 2})))
    assert half.final_step == 2
    rest = train(runconfig.load(None, overrides(corpus, tmp_path, "resumed")))
    assert rest.start_step == 2 and rest.final_step == STEPS
    got, want = final_params(tmp_path / "resumed", STEPS), final_params(out / "straight", STEPS)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("extra", "message"), [
    (["--config", "unilm", "data.pack=true"], "not available for objective 'unilm'"),
    (["--config", "gpt-lm", "data.pack=true", "model.attention.kind=linear"],
     "needs attention.kind='softmax'"),
    (["data.pack={source: 300, tgt: 40}"], "named source, target, length, not tgt"),
    (["data.pack={source: 0}"], "positive integers"),
])
def test_packing_that_cannot_work_is_refused_when_the_config_is_read(extra, message):
    source = extra[1] if extra[0] == "--config" else None
    with pytest.raises(UserError, match=message):
        runconfig.load(source, extra[2:] if source else extra)


def test_packed_rows_must_hold_the_longest_example(packed_run):
    from t5pegasus.pretrain.loader import make_dataset

    _, result = packed_run
    data = _cache_dirs(result)[0]
    with pytest.raises(UserError, match="must hold the longest example"):
        make_dataset(data, batch_size=2, process_index=0, process_count=1, max_source_len=48, max_target_len=16,
                     pack=True, pack_lengths={"source": 32})
