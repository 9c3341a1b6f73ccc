"""Long inputs: a BERT/GPT with hierarchical positions takes inputs past its `max_position_embeddings`, up to the
table's n * n extension (`cfg.position_limit`), in fine-tuning and generation; default lengths still fit the
trained table, and a learned table still caps at n."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import t5pegasus as tp
from t5pegasus.decoding import GPTDecoding, Settings, generate
from t5pegasus.finetune.predict import Predictor
from t5pegasus.finetune.run import FinetuneSpec, _as_overridden, _lengths, finetune

N = 8  # position table rows
LEARNED = tp.GPTConfig.preset("tiny", vocab_size=384, max_position_embeddings=N)
HIER = LEARNED.replace(attention={"position": "hierarchical"})
TEXTS = ["今天北京天气很好", "我们去公园散步", "人民日报发表社论", "经济发展稳中有进", "新年贺词", "春节快乐"]


def test_position_limit_is_the_extended_length_for_hierarchical_positions():
    assert (LEARNED.position_limit, LEARNED.trained_positions) == (N, N)
    assert (HIER.position_limit, HIER.trained_positions) == (N * N, N)
    bert = tp.BertConfig.preset("tiny", max_position_embeddings=N, attention={"position": "hierarchical"})
    assert bert.position_limit == N * N
    assert tp.T5Config.preset("tiny").position_limit is None


def test_finetune_lengths_go_past_the_table_only_with_hierarchical_positions():
    spec = FinetuneSpec(init="x", train="t", dev="d", output="o", max_source_len=40, max_target_len=12)
    assert _lengths(spec, HIER) == (40, 12)
    with pytest.raises(tp.UserError, match="hierarchical would extend its 8 to 64"):
        _lengths(spec, LEARNED)
    # defaults fit the trained table for both
    bare = FinetuneSpec(init="x", train="t", dev="d", output="o")
    assert _lengths(bare, HIER) == _lengths(bare, LEARNED) == (6, 2)
    # the override that turns a learned table hierarchical sizes the lengths for the model that will train
    assert _as_overridden(LEARNED, ("model.attention.position=hierarchical",)).position_limit == N * N


def test_a_sequence_past_the_table_is_refused_not_clamped():
    """A lookup past a learned table would silently repeat its last row: GPT and BERT refuse the sequence (and
    a cache that large); hierarchical positions go to N * N; rotary ones have no table and no limit."""
    ids = jnp.ones((1, N + 1), jnp.int32)
    gpt, bert = tp.models.GPT(LEARNED), tp.models.Bert(tp.BertConfig.preset("tiny", max_position_embeddings=N))
    with pytest.raises(tp.UserError, match=f"9 tokens is longer than the model's {N} positions.*hierarchical"):
        gpt.init(jax.random.key(0), ids)
    with pytest.raises(tp.UserError, match=f"longer than the model's {N} positions"):
        bert.init(jax.random.key(0), ids)
    p = gpt.init(jax.random.key(0), ids[:, :N])["params"]
    with pytest.raises(tp.UserError, match="9 tokens"):
        tp.models.gpt.init_cache(tp.models.GPT(LEARNED), p, 1, N + 1)
    tp.models.GPT(HIER).init(jax.random.key(0), jnp.ones((1, N * N), jnp.int32))
    rope = LEARNED.replace(attention={"position": "rope"})
    assert rope.position_limit is None
    tp.models.GPT(rope).init(jax.random.key(0), jnp.ones((1, 4 * N), jnp.int32))


@pytest.fixture(scope="module")
def params():
    p = tp.models.unbox(tp.models.GPT(HIER).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"])
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda x: rng.normal(scale=0.3, size=x.shape).astype(np.float32), p)


def test_cached_generation_past_the_table_equals_the_full_forward_pass(params):
    """20 prompt tokens + 6 new ones on an 8-row table: each greedy token is the argmax of an uncached forward
    pass over everything before it (positions 8..25 through the hierarchical rows)."""
    prompt = np.random.default_rng(1).integers(3, 384, size=(1, 20)).astype(np.int32)
    out = generate(GPTDecoding(HIER), params, {"prompt_ids": prompt}, Settings(max_new_tokens=6))
    new = np.asarray(out.tokens)[0, 0, : int(out.lengths[0, 0])]
    assert len(new) == 6
    seq = prompt[0].tolist()
    model = tp.models.GPT(HIER)
    for token in new:
        logits = model.apply({"params": params}, jnp.asarray([seq]))
        assert np.isfinite(np.asarray(logits)).all()
        assert int(jnp.argmax(logits[0, -1])) == int(token)
        seq.append(int(token))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from t5pegasus.text import build_wordpiece_vocab, save_vocab

    d = tmp_path_factory.mktemp("long")
    save_vocab(build_wordpiece_vocab(TEXTS, 300), d / "vocab.txt")
    chars = sorted(set("".join(TEXTS)))
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(20):
        src = "".join(rng.choice(chars, int(rng.integers(10, 14))))  # longer than the 8-row table
        lines.append(json.dumps({"src": src, "tgt": src[::-1][:3]}, ensure_ascii=False))
    (d / "train.jsonl").write_text("\n".join(lines[:16]) + "\n", encoding="utf-8")
    (d / "dev.jsonl").write_text("\n".join(lines[16:]) + "\n", encoding="utf-8")
    return d


def test_predictor_generates_past_the_table_with_hierarchical_positions(files, params):
    from t5pegasus.text.wordpiece import BertJiebaTokenizer

    tok = BertJiebaTokenizer(files / "vocab.txt")
    source = ["今天北京天气很好我们去公园散步。人民日报发表社论"]
    whole = len(tok.add_special(tok.encode(source[0])))
    assert whole > N + 2
    settings = Settings(max_new_tokens=4)

    def real_tokens(predictor):
        ids = predictor._inputs(source, 1, predictor._source_limit(settings))["prompt_ids"]
        return int((ids != tok.pad_id).sum())

    assert real_tokens(Predictor(LEARNED, params, tok, max_source_len=24)) == N - 4  # cut to the table
    predictor = Predictor(HIER, params, tok, max_source_len=24)
    assert real_tokens(predictor) == whole  # the whole source, past the table
    assert isinstance(predictor(source, settings)[0][0], str)


def test_finetune_a_learned_gpt_with_hierarchical_positions_past_its_table(files):
    from t5pegasus.convert.hf_export import save_hf
    from t5pegasus.convert.model_folder import load_model

    p = tp.models.unbox(tp.models.GPT(LEARNED).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"])
    save_hf(LEARNED, p, files / "hf", extra_files={"vocab.txt": files / "vocab.txt"})
    spec = FinetuneSpec(init=str(files / "hf"), train=str(files / "train.jsonl"), dev=str(files / "dev.jsonl"),
                        output=str(files / "ft"), steps=2, batch_size=8, learning_rate=3e-3, eval_every=2,
                        max_source_len=16, max_target_len=4,
                        overrides=("model.attention.position=hierarchical", "log.tensorboard=false",
                                   "log.peak_flops=1e9", 'log.progress="off"'))
    result = finetune(spec, say=lambda text: None)
    assert result.run.final_step == 2 and result.best is not None
    loaded = load_model(result.best_dir)
    assert loaded.cfg.attention.position == "hierarchical" and loaded.cfg.position_limit == N * N
    assert loaded.info["max_source_len"] == 16  # 16 + 4 tokens on an 8-row table
    texts = Predictor(loaded.cfg, loaded.params, loaded.tokenizer, max_source_len=16)(
        ["今天北京天气很好我们去公园"], Settings(max_new_tokens=4))
    assert isinstance(texts[0][0], str)
