"""T5 PEGASUS WordPiece + jieba tokenizer: reference behaviour, round trips, special ids (People's Daily)."""

import itertools
import logging

import jieba
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from t5pegasus.errors import UserError
from t5pegasus.pretrain.corpora import peoples_daily_paragraphs
from t5pegasus.text import BertJiebaTokenizer, build_wordpiece_vocab, lowercase_and_normalize, save_vocab
from t5pegasus.text.wordpiece import is_cjk

jieba.setLogLevel(logging.WARNING)


@pytest.fixture(scope="module")
def paragraphs():
    return list(itertools.islice(peoples_daily_paragraphs(), 2500))


@pytest.fixture(scope="module")
def tok(paragraphs):
    extra = ["Hello World, café 123 résumé. Ｅｍａｉｌ: a.b@c.org"]
    return BertJiebaTokenizer(build_wordpiece_vocab(paragraphs[:2000] + extra, 6000))


def reference_ids(tok, text):
    """bert4keras T5 PEGASUS: jieba word in vocab stays whole, else basic tokenization + WordPiece per word."""
    vocab = {t: i for i, t in enumerate(tok.tokens)}
    out = []
    for w in jieba.cut(lowercase_and_normalize(text), HMM=False):
        if w in vocab:
            out.append(vocab[w])
        else:
            out.extend(vocab.get(t, tok.unk_id) for t in tok._basic_wordpiece(w))
    return out


def test_special_ids_follow_bert_layout(tok):
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.decoder_start_id == tok.bos_id
    assert tok.vocab_size == 6000
    ids = tok.add_special(tok.encode("中国人民。"))
    assert ids[0] == 101 and ids[-1] == 102
    assert len(tok.add_special(list(range(200, 300)), max_len=10)) == 10


def test_matches_reference_on_corpus(tok, paragraphs):
    held_out = paragraphs[2000:2300]  # includes characters the vocab never saw
    assert tok.encode_batch(held_out) == [reference_ids(tok, p) for p in held_out]


def test_jieba_words_in_vocab_stay_whole(tok):
    tokens = tok.tokenize("中华人民共和国成立了")
    assert any(len(t) > 1 for t in tokens)
    assert "".join(tokens) == "中华人民共和国成立了"


def test_a_word_wordpiece_cannot_cut_is_one_unk(tok):
    # bert4keras' _word_piece_tokenize returns the word itself when no piece fits somewhere inside it: one
    # [UNK] for the whole word, not a piece-by-piece [UNK] (tests/test_bert4keras_golden.py checks its own ids).
    specials = ["[PAD]", *(f"[unused{i}]" for i in range(1, 100)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    small = BertJiebaTokenizer([*specials, "q", "##x", "很", "好"])
    assert small.tokenize("qx 很好") == ["q", "##x", "很", "好"]
    assert small.tokenize("qzx 很好") == ["[UNK]", "很", "好"]
    assert tok.tokenize("café☃") == reference_tokens(tok, "café☃")


def reference_tokens(tok, text):
    return [tok.tokens[i] for i in reference_ids(tok, text)]


mixed = st.text(
    alphabet=st.sampled_from(list("中国人民的新年讲话１２３abcXYZé ，。！？、“”()-\t\n☃\u2028\u200b") + ["\U0002b820"]),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(mixed)
def test_matches_reference_on_mixed_scripts(tok, text):
    assert tok.encode(text) == reference_ids(tok, text)


def test_round_trip_on_corpus(tok, paragraphs):
    vocab = set(tok.tokens)
    checked = 0
    for p in paragraphs[2000:2400]:
        norm = lowercase_and_normalize(p)
        if all(c in vocab for c in norm):
            assert tok.decode(tok.encode(p)).replace(" ", "") == norm.replace(" ", "")
            checked += 1
    assert checked > 100


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_round_trip_cjk(tok, data):
    chars = [t for t in tok.tokens if len(t) == 1 and is_cjk(t)]
    text = "".join(data.draw(st.lists(st.sampled_from(chars + ["，", "。", "！"]), max_size=30)))
    assert tok.decode(tok.encode(text)) == text


def test_decode_drops_specials(tok):
    ids = tok.add_special(tok.encode("人民日报"))
    assert tok.decode(ids + [tok.pad_id] * 3) == "人民日报"


def test_decode_glues_full_width_forms(tok):
    """People's Daily writes years in full-width digits: decoded text has no spaces inside `１９９８年`."""
    text = "１９９８年１月１日"
    assert tok.decode(tok.encode(text)) == text


def test_vocab_file_round_trip_and_errors(tmp_path, tok):
    save_vocab(tok.tokens, tmp_path / "vocab.txt")
    again = BertJiebaTokenizer(tmp_path / "vocab.txt")
    assert again.encode("新年讲话") == tok.encode("新年讲话")
    with pytest.raises(UserError):
        BertJiebaTokenizer(tmp_path / "missing.txt")
    (tmp_path / "bad.txt").write_text("a\nb\n")
    with pytest.raises(UserError):
        BertJiebaTokenizer(tmp_path / "bad.txt")
