"""Pair files (JSONL / TSV) and their errors, and the examples they become through the training loader:
T5 seq2seq with [CLS] ... [SEP] on both sides, GPT prompt + target with the loss on the target only, UniLM
segment ids."""

import json

import numpy as np
import pytest

from t5pegasus.errors import UserError
from t5pegasus.finetune.data import Pair, prepare_pairs, read_pairs

TEXTS = ["今天北京天气很好", "我们去公园散步", "人民日报发表社论", "经济发展稳中有进", "新年贺词"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from t5pegasus.text import build_wordpiece_vocab, load_tokenizer, save_vocab

    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    save_vocab(build_wordpiece_vocab(TEXTS, 300), path)
    return load_tokenizer(path), path


def test_jsonl_and_tsv(tmp_path):
    j = tmp_path / "a.jsonl"
    j.write_text('\ufeff{"src": "正文一", "tgt": "标题一"}\n\n{"tgt": "标题二", "src": "正文二", "id": 7}\n',
                 encoding="utf-8")
    assert read_pairs(j) == [Pair("正文一", "标题一"), Pair("正文二", "标题二")]
    t = tmp_path / "b.tsv"
    t.write_text("标题一\t正文一\n标题二\t正文\t带制表符\n", encoding="utf-8")
    assert read_pairs(t) == [Pair("正文一", "标题一"), Pair("正文\t带制表符", "标题二")]
    sniffed = tmp_path / "c.data"  # no telling suffix: a first line starting with { is JSONL
    sniffed.write_text('{"src": "x", "tgt": "y"}\n', encoding="utf-8")
    assert read_pairs(sniffed) == [Pair("x", "y")]
    plain = tmp_path / "inputs.txt"  # generation inputs: plain lines are sources
    plain.write_text("第一行\n标题\t第二行正文\n", encoding="utf-8")
    assert [p.src for p in read_pairs(plain, need_target=False)] == ["第一行", "第二行正文"]


@pytest.mark.parametrize("name,text,match", [
    ("bad.jsonl", '{"src": "a", "tgt": "b"}\n{"src": "a", "tgt": \n', r"bad.jsonl:2: not valid JSON"),
    ("key.jsonl", '{"src": "a", "tgt": "b"}\n\n{"source": "a", "tgt": "b"}\n', r"key.jsonl:3: key 'src' is missing"),
    ("type.jsonl", '{"src": "a", "tgt": 3}\n', r"type.jsonl:1: key 'tgt' is a int"),
    ("list.jsonl", '["a", "b"]\n', r"list.jsonl:1: expected a JSON object"),
    ("empty.jsonl", '{"src": "a", "tgt": "  "}\n', r"empty.jsonl:1: empty tgt"),
    ("notab.tsv", "标题\t正文\n没有制表符的行\n", r"notab.tsv:2: no tab"),
    ("title.tsv", "\t正文\n", r"title.tsv:1: empty title"),
    ("blank.tsv", "\n\n", r"blank.tsv holds no examples"),
])  # fmt: skip
def test_malformed_lines_name_file_and_line(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=match):
        read_pairs(path)


def test_missing_file_and_bad_utf8(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_pairs(tmp_path / "nope.jsonl")
    path = tmp_path / "latin1.tsv"
    path.write_bytes("标题\t正文\n".encode() + "t\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1.tsv:2: not valid UTF-8"):
        read_pairs(path)


def _write_pairs(path, pairs):
    path.write_text("".join(json.dumps({"src": s, "tgt": t}, ensure_ascii=False) + "\n" for s, t in pairs),
                    encoding="utf-8")


def _first_batch(folder, n, **lengths):
    from t5pegasus.pretrain.loader import make_dataset

    return next(make_dataset(folder, batch_size=n, shuffle=False, process_index=0, process_count=1, **lengths))


def _spec(tok, path):
    from t5pegasus.text.load import tokenizer_spec

    return tokenizer_spec(path, tok, "wordpiece")


def test_seq2seq_examples(tok, tmp_path):
    tok, vocab = tok
    pairs = [("今天北京天气很好我们去公园散步", "天气很好"), ("人民日报发表社论", "社论")]
    _write_pairs(tmp_path / "p.jsonl", pairs)
    folder = prepare_pairs(tmp_path / "p.jsonl", tmp_path / "data", tok, _spec(tok, vocab), "seq2seq", 8, 4)
    b = _first_batch(folder, 2)
    cls, sep = tok.bos_id, tok.eos_id
    src0 = [cls] + tok.encode(pairs[0][0])[:6] + [sep]  # truncated to 8 tokens with the specials
    np.testing.assert_array_equal(b["encoder_ids"][0], src0)
    tgt1 = [cls] + tok.encode(pairs[1][1]) + [sep]
    n = len(tgt1) - 1
    np.testing.assert_array_equal(b["decoder_ids"][1][:n], tgt1[:-1])  # decoder reads [CLS] t ...
    np.testing.assert_array_equal(b["targets"][1][:n], tgt1[1:])  # ... and predicts t ... [SEP]
    assert b["weights"][1].sum() == n and b["encoder_mask"][1].sum() == len(tok.encode(pairs[1][0])) + 2
    # the same file, tokenizer and lengths give the same dataset folder; other lengths another one
    assert prepare_pairs(tmp_path / "p.jsonl", tmp_path / "data", tok, _spec(tok, vocab), "seq2seq", 8, 4) == folder
    assert prepare_pairs(tmp_path / "p.jsonl", tmp_path / "data", tok, _spec(tok, vocab), "seq2seq", 9, 4) != folder


@pytest.mark.parametrize("objective", ["lm", "unilm"])
def test_prompt_examples_weigh_the_target_only(tok, tmp_path, objective):
    from t5pegasus.families import BertConfig, GPTConfig
    from t5pegasus.training.objectives import make_objective, to_model_batch

    tok, vocab = tok
    pairs = [("新年贺词", "经济发展稳中有进"), ("我们去公园散步", "公园")]
    _write_pairs(tmp_path / "p.jsonl", pairs)
    folder = prepare_pairs(tmp_path / "p.jsonl", tmp_path / "data", tok, _spec(tok, vocab), objective, 6, 5)
    b = _first_batch(folder, 2, max_len=11)
    src = [tok.bos_id] + tok.encode(pairs[0][0])[:4] + [tok.eos_id]
    tgt = tok.encode(pairs[0][1])[:4] + [tok.eos_id]
    np.testing.assert_array_equal(b["ids"][0][: len(src) + len(tgt)], src + tgt)
    np.testing.assert_array_equal(b["segment_ids"][0][: len(src) + len(tgt)], [0] * len(src) + [1] * len(tgt))
    # position i predicts token i+1: weighted exactly where that token is target text (the end token included)
    weighted = b["targets"][0][b["weights"][0] == 1]
    np.testing.assert_array_equal(weighted, tgt)
    cfg = GPTConfig.preset("tiny", vocab_size=384) if objective == "lm" else BertConfig.preset(
        "tiny", vocab_size=384, attention="unilm")
    fields = to_model_batch(b, make_objective(objective, cfg))
    assert set(fields) == ({"ids", "targets", "weights"} | ({"segment_ids"} if objective == "unilm" else set()))
