"""`prepare --sample-alpha A`: each document cut with a sampled sentencepiece segmentation, reproducible from the
seed and the document's text (so `--workers N` writes the same dataset for any N); alpha 0 is today's output."""

import itertools

import numpy as np
import pytest

from t5pegasus.cli import main
from t5pegasus.pretrain.builder import open_source
from t5pegasus.pretrain.corpora import iter_peoples_daily_documents, peoples_daily_paragraphs
from t5pegasus.text import SentencePieceTokenizer, train_sentencepiece


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("sampling")
    train_sentencepiece(list(itertools.islice(peoples_daily_paragraphs(), 600)), d / "m.model", 1500,
                        character_coverage=0.98)
    docs = list(itertools.islice(iter_peoples_daily_documents(), 16))
    (d / "corpus.txt").write_text("\n\n".join(docs), encoding="utf-8")
    return d


def prepare(work, name, *extra, task="lm"):
    out = work / name
    assert main(["prepare", str(work / "corpus.txt"), "-o", str(out), "--tokenizer", str(work / "m.model"),
                 "--doc-sep", "blank", "--task", task, "--max-len", "128", "--max-source-len", "96",
                 "--max-target-len", "48", "--workers", "1", *extra]) == 0
    source = open_source(out)
    return [source[i] for i in range(len(source))]


def same(a, b) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def plain(work):
    return prepare(work, "plain")


def test_alpha_zero_is_todays_output(work, plain):
    assert len(plain) > 10
    assert same(plain, prepare(work, "alpha0", "--sample-alpha", "0"))


def test_same_seed_same_examples_other_seed_other_segmentations(work, plain):
    a = prepare(work, "a", "--sample-alpha", "0.3", "--seed", "5")
    assert same(a, prepare(work, "a-again", "--sample-alpha", "0.3", "--seed", "5"))
    b = prepare(work, "b", "--sample-alpha", "0.3", "--seed", "6")
    assert len(a) == len(b) == len(plain)
    assert not same(a, b) and not same(a, plain)
    # sampled segmentations of the same text: other ids, the same text back (up to where max-len cut each)
    tok = SentencePieceTokenizer(work / "m.model")
    differ = 0
    for x, y, p in zip(a, b, plain, strict=True):
        texts = sorted((tok.decode(e["ids"]) for e in (x, y, p)), key=len)
        assert texts[2].startswith(texts[1]) and texts[1].startswith(texts[0]) and len(texts[0]) > 20
        differ += not np.array_equal(x["ids"], p["ids"])
    assert differ > len(plain) // 2
    # more pieces on average: a sampled segmentation is rarely the shortest one
    assert sum(len(x["ids"]) for x in a) > sum(len(p["ids"]) for p in plain)


def test_workers_write_the_same_sampled_dataset(work, monkeypatch):
    from t5pegasus.pretrain import prepare as prepare_module

    monkeypatch.setattr(prepare_module, "CHUNK_DOCUMENTS", 3)
    one = prepare(work, "w1", "--sample-alpha", "0.3", "--task", "seq2seq")
    two = prepare(work, "w2", "--sample-alpha", "0.3", "--task", "seq2seq", "--workers", "2")
    assert len(one) > 10 and same(one, two)


def test_sample_alpha_needs_a_sentencepiece_tokenizer(work, tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "中"]) + "\n", encoding="utf-8")
    assert main(["prepare", str(work / "corpus.txt"), "-o", str(tmp_path / "x"), "--tokenizer", str(vocab),
                 "--sample-alpha", "0.3"]) == 2
    assert "sentencepiece" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
