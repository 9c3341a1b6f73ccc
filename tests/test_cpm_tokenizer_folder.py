"""CPM-LM as its users run it: a model folder records its tokenizer kind (a Megatron CPM-LM converted here cuts
text with jieba + sentencepiece and maps space / newline to U+2582 / U+2583), every command reads it, and
`generate --prompt-file` puts a few-shot prompt before each input."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import t5pegasus as tp
from t5pegasus.cli import main
from t5pegasus.convert import megatron
from t5pegasus.convert.model_folder import load_model
from t5pegasus.decoding import Settings
from t5pegasus.finetune.predict import Predictor
from t5pegasus.pretrain.corpora import peoples_daily_paragraphs
from t5pegasus.text import SentencePieceTokenizer, train_sentencepiece
from t5pegasus.training.run_folder import RunFolder

TEXT = "今天 天气 不错\n我们 去 公园 散步 吧"  # spaces and a newline: what plain sentencepiece loses


@pytest.fixture(scope="module")
def cpm_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("cpm_vocab") / "chinese_vocab.model"
    lines = ["今天天气不错，我们去公园散步吧。", "人民日报发表评论文章。", "第二行 在 这里\n还有 第三行"] * 20
    train_sentencepiece(list(itertools.islice(peoples_daily_paragraphs(), 150)) + lines, path, 1000, cpm=True,
                        character_coverage=0.98)
    return path


@pytest.fixture(scope="module")
def megatron_cpm(cpm_model, tmp_path_factory):
    """Megatron shards of a tiny random GPT whose vocabulary is the CPM sentencepiece model's."""
    vocab = SentencePieceTokenizer(cpm_model).vocab_size
    cfg = tp.GPTConfig.preset("tiny", vocab_size=vocab, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    params = tp.models.unbox(tp.models.GPT(cfg).init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))["params"])
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: rng.normal(scale=0.5, size=x.shape).astype(np.float32), params)
    folder = tmp_path_factory.mktemp("megatron") / "cpm_mp"
    megatron.save_megatron(cfg, params, folder, ranks=2)
    return folder, cfg.num_heads


@pytest.fixture(scope="module")
def converted(megatron_cpm, cpm_model, tmp_path_factory):
    folder, heads = megatron_cpm
    out = tmp_path_factory.mktemp("hf") / "cpm_hf"
    assert main(["convert", str(folder), str(out), "--tokenizer", str(cpm_model), "--num-heads", str(heads)]) == 0
    return out


def test_converted_megatron_cpm_records_the_cpm_kind(converted):
    assert (converted / "spiece.model").is_file()
    assert RunFolder(converted).recorded_tokenizer_kind() == "cpm"
    loaded = load_model(converted)
    assert loaded.tokenizer_kind == "cpm" and loaded.tokenizer.cpm


def test_cpm_tokenisation_round_trips_spaces_and_newlines_through_the_folder(converted):
    tok = load_model(converted, with_params=False).tokenizer
    pieces = tok.tokenize(TEXT)
    assert "\u2582" in "".join(pieces) and "\u2583" in "".join(pieces)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    # the same file read by its suffix (plain sentencepiece) loses the newline: the recorded kind matters
    plain = load_model(converted, with_params=False, tokenizer_kind="sentencepiece").tokenizer
    assert not plain.cpm and plain.decode(plain.encode(TEXT)) != TEXT


def test_an_explicit_tokenizer_file_is_read_by_its_suffix_unless_a_kind_is_given(converted, cpm_model):
    assert load_model(converted, with_params=False, tokenizer=cpm_model).tokenizer_kind == "sentencepiece"
    assert load_model(converted, with_params=False, tokenizer=cpm_model,
                      tokenizer_kind="cpm").tokenizer_kind == "cpm"


def test_generate_on_a_converted_cpm_folder_uses_the_cpm_tokenizer(converted, tmp_path, monkeypatch):
    inputs = tmp_path / "in.txt"
    inputs.write_text("今天 天气\n我们 去\n", encoding="utf-8")
    seen = []
    encode = SentencePieceTokenizer.encode_batch

    def spy(self, texts):
        seen.append(self.cpm)
        return encode(self, texts)

    monkeypatch.setattr(SentencePieceTokenizer, "encode_batch", spy)
    out = tmp_path / "out.txt"
    assert main(["generate", "--model", str(converted), "--input", str(inputs), "--output", str(out),
                 "--max-length", "6"]) == 0
    assert seen and all(seen)
    loaded = load_model(converted)
    expected = Predictor(loaded.cfg, loaded.params, SentencePieceTokenizer(loaded.tokenizer_path, cpm=True),
                         continuation=True)(["今天 天气", "我们 去"], Settings(max_new_tokens=6))
    assert out.read_text(encoding="utf-8").splitlines() == [t[0].replace("\n", " ") for t in expected]


def test_prompt_file_goes_before_each_input(converted, tmp_path):
    loaded = load_model(converted)
    prompt = "问：今天天气\n答：不错\n问："
    with_prompt = Predictor(loaded.cfg, loaded.params, loaded.tokenizer, continuation=True, prompt=prompt)
    inputs = with_prompt._inputs(["我们去", "公园"], 2, 64)
    tok = loaded.tokenizer
    for row, src in zip(range(2), ["我们去", "公园"], strict=True):
        ids = inputs["prompt_ids"][row][inputs["prompt_mask"][row]].tolist()
        assert ids == tok.encode(prompt + src)
    # the CLI gives what the Predictor with the prompt gives
    settings = Settings(max_new_tokens=5)
    prompted = with_prompt(["我们去"], settings)
    src, pfile, out = tmp_path / "in.txt", tmp_path / "prompt.txt", tmp_path / "out.txt"
    src.write_text("我们去\n", encoding="utf-8")
    pfile.write_text(prompt, encoding="utf-8")
    assert main(["generate", "--model", str(converted), "--input", str(src), "--prompt-file", str(pfile),
                 "--output", str(out), "--max-length", "5"]) == 0
    assert out.read_text(encoding="utf-8").splitlines() == [prompted[0][0].replace("\n", " ")]


def test_a_long_prompt_loses_its_start_not_the_input(converted):
    loaded = load_model(converted)
    tok = loaded.tokenizer
    prompt = "人民日报发表评论文章。" * 20
    inputs = Predictor(loaded.cfg, loaded.params, tok, continuation=True, prompt=prompt)._inputs(["公园散步"], 1, 16)
    ids = inputs["prompt_ids"][0][inputs["prompt_mask"][0]].tolist()
    assert len(ids) == 16 and ids == tok.encode(prompt + "公园散步")[-16:]


def test_prompt_file_is_refused_for_a_model_that_does_not_continue_text(tmp_path, capsys):
    cfg = tp.T5Config.preset("tiny")
    tok_file = tmp_path / "vocab.txt"
    tok_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]) + "\n", encoding="utf-8")
    from t5pegasus.text.wordpiece import BertJiebaTokenizer

    with pytest.raises(tp.UserError, match="language model"):
        Predictor(cfg, None, BertJiebaTokenizer(tok_file), prompt="few-shot")


def test_data_side_reads_a_cpm_model_as_cpm(cpm_model, tmp_path):
    from t5pegasus.training import data as training_data
    from t5pegasus.training.runconfig import DataConfig

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(["今天天气不错\n我们去 公园"] * 6) + "\n", encoding="utf-8")
    cfg = DataConfig(corpus=str(corpus), vocab=str(cpm_model), tokenizer_kind="cpm", task="lm", max_len=32,
                     eval_every_nth=3, cache_dir=str(tmp_path / "cache"))
    prepared = training_data.prepare(cfg, say=lambda *_: None)
    assert prepared.tokenizer_kind == "cpm"
    meta = json.loads((prepared.train / "t5pegasus.json").read_text(encoding="utf-8"))
    assert meta["tokenizer"]["kind"] == "cpm"
