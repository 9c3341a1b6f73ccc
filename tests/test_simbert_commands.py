"""SimBERT as its users run it, on the folder bert4keras built (tests/golden/simbert_b4k, a Google-BERT-named TF
checkpoint whose bert_config.json does not say it is SimBERT): `--model-kind simbert` makes it compute
bert4keras' sentence vectors; `encode`, `search`, `similar`, `convert` and `finetune --objective simbert`
end to end; the groups data format through `prepare` and the loader."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import t5pegasus as tp
from t5pegasus.cli import main

pytest.importorskip("tensorflow")

SIMBERT = Path(__file__).parent / "golden" / "simbert_b4k"
TOL = 1e-4
SENTENCES = sorted({s for pair in json.loads((SIMBERT / "golden.json").read_text(encoding="utf-8"))["pairs"]
                    for s in pair})


def golden():
    with np.load(SIMBERT / "golden.npz") as g:
        return dict(g)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("simbert")
    # blank lines are skipped, line numbers kept
    (d / "corpus.txt").write_text(SENTENCES[0] + "\n\n" + "\n".join(SENTENCES[1:]) + "\n", encoding="utf-8")
    return d


def test_model_kind_simbert_gives_bert4keras_sentence_vectors():
    """Read as plain BERT the folder misses SimBERT's pooled vector; `model_kind="simbert"` (what
    --model-kind sets) reproduces it within 1e-4 relative."""
    from t5pegasus.convert.model_folder import load_model

    g = golden()
    ref = np.abs(g["pooled"]).max()
    for kind, close in ((None, False), ("simbert", True)):
        loaded = load_model(SIMBERT, model_kind=kind)
        out = tp.models.Bert(loaded.cfg).apply({"params": loaded.params}, jnp.asarray(g["token_ids"]),
                                               jnp.asarray(g["segment_ids"]))
        error = np.abs(np.asarray(out.pooled) - g["pooled"]).max() / ref
        assert (error < TOL) == close, (kind, error)
    assert (loaded.cfg.mask, loaded.cfg.pooler_activation) == ("unilm", "linear")
    with pytest.raises(tp.UserError, match="model kind 'gpt2' is not one of the bert family's: bert, unilm, "):
        load_model(SIMBERT, model_kind="gpt2")


def test_encode_writes_each_lines_pooled_vector(corpus, capsys):
    """`encode` = the pooled output of `[CLS] line [SEP]`, row by row, whatever the batching and padding."""
    from t5pegasus.convert.model_folder import load_model

    out = corpus / "vectors.npy"
    assert main(["encode", "--model", str(SIMBERT), "--model-kind", "simbert", str(corpus / "corpus.txt"),
                 "-o", str(out), "--batch-size", "2"]) == 0
    assert f"wrote {len(SENTENCES)} vectors of 32 dimensions" in capsys.readouterr().out
    vectors = np.load(out)
    loaded = load_model(SIMBERT, model_kind="simbert")
    tok, model = loaded.tokenizer, tp.models.Bert(loaded.cfg)
    for i, s in enumerate(SENTENCES):
        ids = jnp.asarray([tok.add_special(tok.encode(s))])
        alone = np.asarray(model.apply({"params": loaded.params}, ids).pooled)[0]
        np.testing.assert_allclose(vectors[i], alone, atol=1e-5)
    assert main(["encode", "--model", str(SIMBERT), "--model-kind", "simbert", str(corpus / "corpus.txt"),
                 "-o", str(corpus / "unit.npy"), "--normalize"]) == 0
    np.testing.assert_allclose(np.linalg.norm(np.load(corpus / "unit.npy"), axis=1), 1.0, rtol=1e-5)
    # without the model kind the vectors are another model's, and the command says why
    capsys.readouterr()
    assert main(["encode", "--model", str(SIMBERT), str(corpus / "corpus.txt"), "-o", str(corpus / "b.npy")]) == 0
    assert "--model-kind simbert" in capsys.readouterr().err
    assert np.abs(np.load(corpus / "b.npy") - vectors).max() > 0.1 * np.abs(vectors).max()


def _search(corpus, capsys, *extra):
    capsys.readouterr()
    assert main(["search", "--model", str(SIMBERT), "--model-kind", "simbert", "--corpus",
                 str(corpus / "corpus.txt"), "--input", str(corpus / "queries.txt"), "--jsonl", *extra]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_search_returns_a_query_in_the_corpus_first(corpus, capsys):
    (corpus / "queries.txt").write_text("\n".join([*SENTENCES, "天气很好"]) + "\n", encoding="utf-8")
    found = _search(corpus, capsys, "-k", "3")
    assert [f["query"] for f in found] == [*SENTENCES, "天气很好"]
    lines = {s: n for n, s in enumerate((corpus / "corpus.txt").read_text(encoding="utf-8").split("\n"), 1)}
    for f in found[:-1]:
        first = f["results"][0]
        assert (first["text"], first["line"]) == (f["query"], lines[f["query"]])
        assert first["score"] == pytest.approx(1.0, abs=1e-5)
    # best first, and the cosines of the encoded vectors
    from t5pegasus.cli.options import read_texts

    vectors = np.load(corpus / "vectors.npy")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for f in found:
        scores = [r["score"] for r in f["results"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == 3
    texts = read_texts(str(corpus / "corpus.txt"))
    q = unit[texts.index(SENTENCES[2])]
    want = np.argsort(-(unit @ q))[:3]
    assert [r["text"] for r in found[2]["results"]] == [texts[i] for i in want]
    # precomputed corpus vectors give the same answer; vectors of another corpus are refused
    assert _search(corpus, capsys, "-k", "3", "--corpus-vectors", str(corpus / "vectors.npy")) == found
    np.save(corpus / "short.npy", vectors[:2])
    assert main(["search", "--model", str(SIMBERT), "--corpus", str(corpus / "corpus.txt"), "--input",
                 str(corpus / "queries.txt"), "--corpus-vectors", str(corpus / "short.npy")]) == 2
    assert "encode the same corpus" in capsys.readouterr().err


def test_search_plain_output(corpus, capsys):
    (corpus / "one.txt").write_text(SENTENCES[1] + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["search", "--model", str(SIMBERT), "--model-kind", "simbert", "--corpus",
                 str(corpus / "corpus.txt"), "--input", str(corpus / "one.txt"), "-k", "2"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[0] == SENTENCES[1]
    score, number, text = lines[1].split("\t")
    assert (float(score), text) == (1.0, SENTENCES[1]) and int(number) == 3  # line 2 of the file is blank
    assert len(lines[2].split("\t")) == 3 and lines[3] == ""


def test_faiss_backend_equals_numpy():
    pytest.importorskip("faiss")
    from t5pegasus.finetune.similar import nearest

    rng = np.random.default_rng(0)
    corpus, queries = rng.normal(size=(500, 16)), rng.normal(size=(7, 16))
    a, sa = nearest(queries, corpus, 5, "numpy")
    b, sb = nearest(queries, corpus, 5, "faiss")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(sa, sb, atol=1e-5)


def test_nearest_is_exact_and_refuses_missing_faiss(monkeypatch):
    from t5pegasus.finetune import similar

    rng = np.random.default_rng(1)
    corpus, queries = rng.normal(size=(50, 8)), rng.normal(size=(3, 8))
    indices, scores = similar.nearest(queries, corpus, 4, "numpy", block=2)
    unit = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    for q, row, s in zip(queries, indices, scores, strict=True):
        cos = unit @ (q / np.linalg.norm(q))
        np.testing.assert_array_equal(row, np.argsort(-cos)[:4])
        np.testing.assert_allclose(s, np.sort(cos)[::-1][:4], rtol=1e-5)
    monkeypatch.setattr(similar, "_faiss", lambda: None)
    with pytest.raises(tp.UserError, match="pip install faiss-cpu"):
        similar.nearest(queries, corpus, 4, "faiss")
    assert similar.search_backend("auto", 10**7) == "numpy"


def test_similar_prints_ranked_candidates(corpus, capsys):
    """Sampled candidates, the input and duplicates dropped, ranked by the cosine of their vectors."""
    from t5pegasus.convert.model_folder import load_model
    from t5pegasus.finetune.similar import SentenceEncoder

    (corpus / "inputs.txt").write_text(f"{SENTENCES[2]}\n{SENTENCES[3]}\n", encoding="utf-8")
    capsys.readouterr()
    args = ["similar", "--model", str(SIMBERT), "--model-kind", "simbert", "--input", str(corpus / "inputs.txt"),
            "-n", "6", "-k", "3", "--max-length", "8", "--jsonl"]
    assert main(args) == 0
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [f["text"] for f in found] == [SENTENCES[2], SENTENCES[3]]
    loaded = load_model(SIMBERT, model_kind="simbert")
    encoder = SentenceEncoder(loaded.cfg, loaded.params, loaded.tokenizer)
    for f in found:
        texts = [s["text"] for s in f["similar"]]
        assert 1 <= len(texts) <= 3 and len(set(texts)) == len(texts) and f["text"] not in texts
        scores = [s["score"] for s in f["similar"]]
        assert scores == sorted(scores, reverse=True)
        v = encoder([f["text"], *texts])
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        np.testing.assert_allclose(scores, v[1:] @ v[0], atol=1e-5)
    assert main(args) == 0  # reproducible from the seed
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == found
    # without the model kind the folder is a plain BERT, which cannot generate: one line, exit 2
    assert main(["similar", "--model", str(SIMBERT), "--input", str(corpus / "inputs.txt")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "--model-kind simbert" in err and "Traceback" not in err


def test_convert_records_the_model_kind(tmp_path, capsys):
    """A SimBERT converted with --model-kind is a SimBERT in its new folder: no option needed to read it."""
    from t5pegasus.convert.model_folder import load_model

    assert main(["convert", str(SIMBERT), str(tmp_path / "hf"), "--model-kind", "simbert"]) == 0
    loaded = load_model(tmp_path / "hf")
    assert (loaded.cfg.mask, loaded.cfg.pooler_activation) == ("unilm", "linear")
    g = golden()
    out = tp.models.Bert(loaded.cfg).apply({"params": loaded.params}, jnp.asarray(g["token_ids"]),
                                           jnp.asarray(g["segment_ids"]))
    assert np.abs(np.asarray(out.pooled) - g["pooled"]).max() < TOL * np.abs(g["pooled"]).max()


GROUPS = [
    {"text": "北京天安门，我们今天去看看。", "synonyms": ["我们今天去北京天安门看看。", "今天去天安门"]},
    {"text": "我喜欢自然语言处理和机器学习！", "synonyms": ["我喜欢机器学习", "自然语言处理很好"]},
    {"text": "研究生们在鼹鼠洞旁边讨论模型。", "synonyms": ["研究生们讨论模型"]},
    {"text": "天气非常好", "synonyms": ["今天天气很好", "天气好"]},
    {"text": "只有一句", "synonyms": []},  # no pair: dropped
]


def _write_groups(path, groups):
    path.write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in groups), encoding="utf-8")
    return path


def test_prepare_groups_and_the_loader(tmp_path, capsys):
    """`prepare --task simbert`: a group a stored example; the loader draws a pair per group and epoch from
    the seed and puts both orders in a batch (a->b rows, then b->a), with pair ids unique over the global batch."""
    from t5pegasus.pretrain.loader import make_dataset
    from t5pegasus.text.wordpiece import BertJiebaTokenizer

    _write_groups(tmp_path / "groups.jsonl", GROUPS)
    assert main(["prepare", str(tmp_path / "groups.jsonl"), "-o", str(tmp_path / "ds"), "--tokenizer",
                 str(SIMBERT / "vocab.txt"), "--task", "simbert", "--max-source-len", "12",
                 "--max-target-len", "10"]) == 0
    out = capsys.readouterr().out
    assert "groups read: 5" in out and "fewer than two sentences: 1" in out and "examples written: 4" in out
    tok = BertJiebaTokenizer(SIMBERT / "vocab.txt")
    encoded = [[tuple(tok.encode(s)) for s in (g["text"], *g["synonyms"])] for g in GROUPS[:4]]
    it = make_dataset(tmp_path / "ds", batch_size=4, seed=3, shuffle=False)
    batches = [next(it) for _ in range(4)]  # two epochs of two batches
    seen = []
    for b in batches:
        assert b["ids"].shape == (4, 22) and b["pair_ids"][:, 0].tolist() == [0, 1, 0, 1]
        for r in range(2):
            row, back = b["ids"][r], b["ids"][r + 2]
            n, m = int((row != 0).sum()), int((back != 0).sum())
            assert n == m and row[0] == back[0] == tok.bos_id
            seps = np.flatnonzero(row[:n] == tok.eos_id)
            a, c = tuple(row[1:seps[0]]), tuple(row[seps[0] + 1:n - 1])
            assert back[:n].tolist() == [tok.bos_id, *c, tok.eos_id, *a, tok.eos_id]
            assert b["segment_ids"][r, :n].tolist() == [0] * (len(a) + 2) + [1] * (len(c) + 1)
            group = next(i for i, e in enumerate(encoded) if a[:10] in [x[:10] for x in e])
            assert c[:9] in [x[:9] for x in encoded[group]] and a != c
            seen.append((group, a, c))
        # the loss reads the next token where it is target text
        np.testing.assert_array_equal(b["targets"][:, :-1], b["ids"][:, 1:])
        np.testing.assert_array_equal(b["weights"][:, :-1], b["segment_ids"][:, 1:])
    assert sorted(g for g, _, _ in seen[:4]) == [0, 1, 2, 3] == sorted(g for g, _, _ in seen[4:])
    assert seen[:4] != seen[4:]  # each epoch draws its own pairs ...
    again = make_dataset(tmp_path / "ds", batch_size=4, seed=3, shuffle=False)
    assert all(np.array_equal(next(again)["ids"], b["ids"]) for b in batches)  # ... reproducibly
    other = make_dataset(tmp_path / "ds", batch_size=4, seed=3, shuffle=False, process_index=1, process_count=2)
    half = next(other)  # process 1 of 2: rows 2, 3 of the one global batch (both pairs' b->a rows)
    assert half["pair_ids"][:, 0].tolist() == [0, 1] and np.array_equal(half["ids"], batches[0]["ids"][2:])
    with pytest.raises(tp.UserError, match="multiple of 2"):
        make_dataset(tmp_path / "ds", batch_size=3)
    with pytest.raises(tp.UserError, match=r"2 x 1 process\(es\) x optim.accumulate 2"):
        from t5pegasus.pretrain.groups import pairs_per_batch

        pairs_per_batch(6, 1, 2)


def test_bad_group_lines_are_one_line_errors(tmp_path):
    from t5pegasus.pretrain.groups import read_groups

    (tmp_path / "a.jsonl").write_text('{"text": "好", "synonyms": "不是列表"}\n', encoding="utf-8")
    with pytest.raises(tp.UserError, match=r"a.jsonl:1: \"synonyms\" must be a list of strings"):
        read_groups(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text('{"src": "好"}\n', encoding="utf-8")
    with pytest.raises(tp.UserError, match=r"b.jsonl:1: expected \{\"text\""):
        read_groups(tmp_path / "b.jsonl")


def test_finetune_simbert_from_the_bert4keras_folder(tmp_path, capsys):
    """`finetune --init <released-layout SimBERT> --model-kind simbert --objective simbert` trains on groups
    (the loss falls), keeps a best model that is a SimBERT by its own config, and `similar` runs on it."""
    train = _write_groups(tmp_path / "train.jsonl", GROUPS[:4] * 4)
    dev = _write_groups(tmp_path / "dev.jsonl", GROUPS[:2])
    out = tmp_path / "ft"
    assert main(["finetune", "--init", str(SIMBERT), "--model-kind", "simbert", "--objective", "simbert",
                 "--train", str(train), "--dev", str(dev), "--output", str(out), "--steps", "6",
                 "--batch-size", "8", "--lr", "3e-3", "--eval-every", "6", "--max-source-len", "16",
                 "--max-target-len", "12", "--max-length", "6", "log.tensorboard=false", "log.peak_flops=1e9",
                 "log.progress=off", "train.log_every=1"]) == 0
    assert "best model:" in capsys.readouterr().out
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if r.get("kind") == "train" and "loss" in r]
    assert len(losses) >= 5 and losses[-1] < losses[0]
    for line in (r for r in logged if r.get("kind") in ("train", "eval") and "loss" in r):  # both parts, logged
        assert line["similarity_loss"] > 0 and line["seq2seq_loss"] > 0, line
        np.testing.assert_allclose(line["seq2seq_loss"] + line["similarity_loss"], line["loss"], rtol=1e-5)
    cfg = json.loads((out / "best" / "model_config.json").read_text())
    assert (cfg["mask"], cfg["pooler_activation"]) == ("unilm", "linear")
    assert json.loads((out / "best" / "finetune.json").read_text())["objective"] == "simbert"
    (tmp_path / "in.txt").write_text(GROUPS[0]["text"] + "\n", encoding="utf-8")
    assert main(["similar", "--model", str(out), "--input", str(tmp_path / "in.txt"), "-n", "4", "-k", "2"]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith(GROUPS[0]["text"] + "\n") and "note:" not in printed.err


SMALL_BERT = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.head_dim=16",
              "model.intermediate_size=64", "data.vocab_size=300", "train.steps=2", "checkpoint.every=2",
              "eval.every=2", "eval.batches=1", "log.tensorboard=false", "log.peak_flops=1e9", "log.progress=off"]


def test_pretrain_simbert_preset_on_groups(tmp_path, capsys):
    """`pretrain --config simbert data.corpus=GROUPS.jsonl`: vocab, held-out groups, the simbert objective;
    the run folder is a SimBERT that `encode` and `similar` read without --model-kind."""
    groups = _write_groups(tmp_path / "groups.jsonl", GROUPS[:4] * 6)
    assert main(["pretrain", "--config", "simbert", f"data.corpus={groups}", f"output_dir={tmp_path}",
                 f"data.cache_dir={tmp_path / 'cache'}", "data.batch_size=8", "data.eval_every_nth=3",
                 *SMALL_BERT]) == 0
    out = capsys.readouterr().out
    assert "simbert objective" in out and "finished: step 2 of 2" in out and "held-out loss" in out
    run = tmp_path / "simbert-demo"
    cfg = json.loads((run / "model_config.json").read_text())
    assert (cfg["mask"], cfg["pooler_activation"]) == ("unilm", "linear")
    (tmp_path / "in.txt").write_text(GROUPS[3]["text"] + "\n", encoding="utf-8")
    assert main(["encode", "--model", str(run), str(tmp_path / "in.txt"), "-o", str(tmp_path / "v.npy")]) == 0
    assert "note:" not in capsys.readouterr().err and np.load(tmp_path / "v.npy").shape == (1, 32)
    assert main(["similar", "--model", str(run), "--input", str(tmp_path / "in.txt"), "-n", "3",
                 "--max-length", "4"]) == 0
    # the preset without a corpus says what it needs, in one line
    capsys.readouterr()
    assert main(["pretrain", "--config", "simbert", f"output_dir={tmp_path}", "name=none",
                 f"data.cache_dir={tmp_path / 'cache2'}"]) == 2
    assert "give data.corpus=GROUPS.jsonl" in capsys.readouterr().err


def test_pretrain_with_model_family_alone(tmp_path, capsys):
    """`pretrain model.family=gpt` trains the GPT LM (its family's preset, objective and data task)."""
    from t5pegasus.pretrain.corpora import iter_peoples_daily_documents

    docs = [doc for _, doc in zip(range(12), iter_peoples_daily_documents(), strict=False)]
    (tmp_path / "docs.txt").write_text("\n\n".join(docs), encoding="utf-8")
    assert main(["pretrain", "model.family=gpt", f"data.corpus={tmp_path / 'docs.txt'}", f"output_dir={tmp_path}",
                 f"data.cache_dir={tmp_path / 'cache'}", "data.batch_size=8", "data.max_len=32",
                 "model.max_position_embeddings=32", *SMALL_BERT]) == 0
    out = capsys.readouterr().out
    assert "lm objective" in out and "finished: step 2 of 2" in out
    assert json.loads((tmp_path / "gpt-lm-demo" / "model_config.json").read_text())["family"] == "gpt"
