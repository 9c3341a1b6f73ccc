"""Sentencepiece (mT5 ids, CPM mode), vocabulary building and Viterbi sampling, on People's Daily."""

import itertools
import unicodedata
from collections import Counter

import numpy as np
import pytest

from t5pegasus.cli import main
from t5pegasus.pretrain.corpora import peoples_daily_paragraphs
from t5pegasus.text import SentencePieceTokenizer, build_wordpiece_vocab, train_sentencepiece
from t5pegasus.text.vocab import BERT_HEAD


@pytest.fixture(scope="module")
def paragraphs():
    return list(itertools.islice(peoples_daily_paragraphs(), 2500))


@pytest.fixture(scope="module")
def spm_tok(paragraphs, tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "m.model"
    train_sentencepiece(paragraphs[:2000], path, 2000, character_coverage=0.98)
    return SentencePieceTokenizer(path)


@pytest.fixture(scope="module")
def cpm_tok(paragraphs, tmp_path_factory):
    path = tmp_path_factory.mktemp("cpm") / "cpm.model"
    text = paragraphs[:1500] + ["hello world and more words\nsecond line here"] * 20
    train_sentencepiece(text, path, 2000, cpm=True, character_coverage=0.98)
    return SentencePieceTokenizer(path, cpm=True)


def test_mt5_special_ids(spm_tok):
    assert (spm_tok.pad_id, spm_tok.eos_id, spm_tok.unk_id, spm_tok.bos_id) == (0, 1, 2, None)
    assert spm_tok.decoder_start_id == 0
    assert spm_tok.add_special([5, 6])[-1] == 1


def test_round_trip(spm_tok, paragraphs):
    checked = 0
    for p in paragraphs[2000:2300]:
        ids = spm_tok.encode(p)
        if spm_tok.unk_id not in ids:
            assert spm_tok.decode(ids) == unicodedata.normalize("NFKC", p)
            checked += 1
    assert checked > 50


def test_cpm_maps_space_and_newline(cpm_tok):
    text = "hello world\nsecond line"
    pieces = cpm_tok.tokenize(text)
    assert "\u2582" in "".join(pieces) and "\u2583" in "".join(pieces)
    assert cpm_tok.decode(cpm_tok.encode(text)) == text


def test_sentencepiece_sampling_keeps_text(spm_tok, paragraphs):
    p = "".join(paragraphs[2001:2006])
    seen = {tuple(spm_tok.encode(p, sample=True, alpha=0.1)) for _ in range(10)}
    assert len(seen) > 1
    for ids in seen:
        assert spm_tok.decode(ids) == spm_tok.decode(spm_tok.encode(p))


def test_viterbi_best_equals_sentencepiece(spm_tok, paragraphs):
    sampler = spm_tok.sampler()
    for p in paragraphs[2000:2150] + ["Hello world ☃☃ mixed 中文 text"]:
        assert sampler.encode(p) == spm_tok.encode(p)


def test_viterbi_sampling_distribution(spm_tok):
    """Sampled segmentations of a short word follow exp(sum of scores), exactly enumerable here."""
    sampler = spm_tok.sampler(alpha=1.0)
    word = "中国人民"
    text = sampler.normalize(word)
    rng = np.random.default_rng(0)
    counts = Counter(tuple(sampler.encode(word, rng)) for _ in range(3000))

    def segmentations(s):
        if not s:
            yield ()
            return
        for k in range(1, len(s) + 1):
            if s[:k] in sampler.pieces:
                for rest in segmentations(s[k:]):
                    yield (s[:k],) + rest

    segs = list(segmentations(text))
    weights = np.array([np.exp(sum(sampler.pieces[x][1] for x in seg)) for seg in segs])
    probs = weights / weights.sum()
    for seg, prob in zip(segs, probs, strict=True):
        ids = tuple(sampler.pieces[x][0] for x in seg)
        assert abs(counts[ids] / 3000 - prob) < 0.03
    same = [sampler.encode(word, np.random.default_rng(7)) for _ in range(2)]
    assert same[0] == same[1]


def test_wordpiece_vocab_layout(paragraphs):
    vocab = build_wordpiece_vocab(paragraphs[:500] + ["ABC 123"], 3000)
    assert vocab[:104] == BERT_HEAD and len(vocab) == 3000 == len(set(vocab))
    chars = {c for p in paragraphs[:500] for c in p.lower()}
    assert all(c in vocab for c in list(chars)[:50])
    assert "##2" in vocab and "abc" not in vocab[:104]
    assert any(len(t) > 1 and not t.startswith(("[", "##")) for t in vocab)  # jieba words


def test_vocab_cli(tmp_path, paragraphs):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(paragraphs[:300]), encoding="utf-8")
    assert main(["vocab", str(corpus), "-o", str(tmp_path / "vocab.txt"), "--size", "2500"]) == 0
    assert len((tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines()) == 2500
    assert main(["vocab", str(corpus), "-o", str(tmp_path / "m.model"), "--spm", "--size", "1500",
                 "--character-coverage", "0.98"]) == 0  # fmt: skip
    assert SentencePieceTokenizer(tmp_path / "m.model").vocab_size == 1500
    assert main(["vocab", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "v2.txt")]) == 2
