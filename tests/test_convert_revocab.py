"""Re-vocabularising a model (t5pegasus.convert.revocab): a small HF mT5 and a sentencepiece model trained here
moved to a WordPiece vocab.txt. Rows are checked against the torch model's own weights: a token the
sentencepiece model has keeps its row, an absent one gets exactly the mean of its pieces' rows, the untied
head's columns likewise, special tokens take the old special rows, and the rest are the rows a fresh model of
the seed has. Then `convert --vocab` and `pretrain model.init=... data.vocab=...` from the CLI, and a resume
that does not re-initialise."""

import json

import jax
import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

import t5pegasus as tp
from t5pegasus.cli import main
from t5pegasus.convert import revocab as rv
from t5pegasus.convert.model_folder import load_model
from t5pegasus.text import BertJiebaTokenizer, SentencePieceTokenizer, train_sentencepiece
from t5pegasus.text.vocab import BERT_HEAD

WORDS = ["经济", "发展", "改革", "开放", "人民", "政府", "国家", "建设", "社会", "文化", "教育", "科技",
         "企业", "市场", "农业", "工业", "城市", "农村", "历史", "未来", "我们", "他们", "今年", "全国"]
LATIN = ["model", "data", "test"]
BOUNDARY = "\u2581"


def generated_documents(n: int = 150, seed: int = 0) -> list[str]:
    """Documents of random sentences over a small word list (blank-line separated when written)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(int(rng.integers(4, 8))):
            words = [WORDS[i] for i in rng.integers(0, len(WORDS), int(rng.integers(3, 7)))]
            if rng.random() < 0.2:
                words.insert(int(rng.integers(0, len(words))), f" {LATIN[int(rng.integers(0, 3))]} ")
            sentences.append("".join(words) + ("，" if rng.random() < 0.3 else "。"))
            if rng.random() < 0.3:  # now and then a sentence of space-separated Latin words
                sentences.append(" ".join(LATIN[i] for i in rng.integers(0, len(LATIN), 4)) + ". ")
        docs.append("".join(sentences))
    return docs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The sentencepiece model, a HF mT5 on it (spiece.model beside it), and a WordPiece vocab.txt."""
    from tests.hf_reference import small_t5

    d = tmp_path_factory.mktemp("revocab")
    docs = generated_documents()
    (d / "docs.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    train_sentencepiece(docs, d / "spiece.model", 120, character_coverage=1.0)
    sp = SentencePieceTokenizer(d / "spiece.model")
    hf = d / "mt5"
    torch_model = small_t5("mt5", str(hf), seed=1, vocab_size=sp.vocab_size)
    (hf / "spiece.model").write_bytes((d / "spiece.model").read_bytes())
    shared = torch_model.shared.weight.detach().numpy().astype(np.float64)
    head = torch_model.lm_head.weight.detach().numpy().astype(np.float64)  # [vocab, d_model]

    bare = [sp.id_to_token(i) for i in range(3, sp.vocab_size)
            if not sp.id_to_token(i).startswith(BOUNDARY) and len(sp.id_to_token(i)) >= 1]
    cjk_bare = [p for p in bare if all("\u4e00" <= c <= "\u9fff" for c in p)]
    # two bare pieces whose concatenation is no piece and cuts (no dummy prefix) back into exactly the two
    proto = pb.ModelProto()
    proto.ParseFromString(sp.sp.serialized_model_proto())
    proto.normalizer_spec.add_dummy_prefix = False
    no_prefix = spm.SentencePieceProcessor()
    no_prefix.LoadFromSerializedProto(proto.SerializeToString())
    pair = next((a, b) for a in cjk_bare for b in cjk_bare
                if a != b and sp.sp.piece_to_id(a + b) == sp.unk_id and no_prefix.encode(a + b, out_type=str) == [a, b])
    # "data" is a piece at a word start and inside a word; "datamodel" is none, cut at a word start
    assert sp.tokenize("datamodel") == [BOUNDARY + "data", "model"] and sp.sp.piece_to_id("data") != sp.unk_id
    tokens = list(BERT_HEAD) + [cjk_bare[0], cjk_bare[1], pair[0] + pair[1], "##a", "data", "datamodel", "龘",
                                "##龘"]
    (d / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    n = len(BERT_HEAD)
    ids = {
        "copied_cjk": (n, sp.sp.piece_to_id(cjk_bare[0])),
        "copied_cjk2": (n + 1, sp.sp.piece_to_id(cjk_bare[1])),
        "continuation": (n + 3, sp.sp.piece_to_id("a")),
        "word": (n + 4, sp.sp.piece_to_id(BOUNDARY + "data")),
        "averaged": (n + 2, [sp.sp.piece_to_id(pair[0]), sp.sp.piece_to_id(pair[1])]),
        "averaged_word": (n + 5, [sp.sp.piece_to_id(BOUNDARY + "data"), sp.sp.piece_to_id("model")]),
        "unknown": (n + 6, None),
        "unknown_continuation": (n + 7, None),
    }
    return dict(dir=d, hf=hf, sp=sp, shared=shared, head=head, tokens=tokens, ids=ids)


def fresh_tables(cfg, seed):
    """The embedding and head of a model of `cfg` initialised as a run of `seed` is (jitted, fold_in(key, 0)):
    jitted, as the loop does (eagerly, the head's stddev product may round one ulp apart)."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    ones = np.ones((1, 4), np.int32)
    params = tp.models.unbox(jax.jit(lambda k: tp.models.T5(cfg).init(k, ones, ones)["params"])(key))
    return np.asarray(params["shared"]["embedding"]), np.asarray(params["decoder"]["lm_head"]["kernel"]).T


def test_rows_follow_the_rule(world):
    loaded = load_model(world["hf"])
    new = BertJiebaTokenizer(world["dir"] / "vocab.txt")
    result = rv.revocab(loaded.cfg, loaded.params, loaded.tokenizer, new, rows=128, seed=3)
    cfg, params = result.cfg, result.params
    assert cfg.vocab_size == 128 and (cfg.pad_token_id, cfg.unk_token_id, cfg.decoder_start_token_id,
                                      cfg.eos_token_id) == (0, 100, 101, 102)
    assert cfg.replace(vocab_size=loaded.cfg.vocab_size, pad_token_id=0, unk_token_id=2, eos_token_id=1,
                       decoder_start_token_id=0) == loaded.cfg  # nothing else changed
    emb = np.asarray(params["shared"]["embedding"], np.float64)
    head = np.asarray(params["decoder"]["lm_head"]["kernel"], np.float64).T  # [vocab, d_model] like torch's
    old_emb, old_head = world["shared"], world["head"]
    ids = world["ids"]
    for name in ("copied_cjk", "copied_cjk2", "continuation", "word"):
        new_id, old_id = ids[name]
        assert old_id != world["sp"].unk_id, name
        np.testing.assert_array_equal(emb[new_id], old_emb[old_id].astype(np.float32), err_msg=name)
        np.testing.assert_array_equal(head[new_id], old_head[old_id].astype(np.float32), err_msg=name)
    for name in ("averaged", "averaged_word"):
        new_id, pieces = ids[name]
        assert result.rows[new_id] == rv.Row("averaged", tuple(pieces)), name
        np.testing.assert_allclose(emb[new_id], old_emb[pieces].mean(0), rtol=0, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(head[new_id], old_head[pieces].mean(0), rtol=0, atol=1e-7, err_msg=name)
    for new_id, old_id in ((0, 0), (100, 2), (101, 0), (102, 1)):  # [PAD] [UNK] [CLS]=decoder start [SEP]=</s>
        np.testing.assert_array_equal(emb[new_id], old_emb[old_id].astype(np.float32))
        np.testing.assert_array_equal(head[new_id], old_head[old_id].astype(np.float32))
    fresh_emb, fresh_head = fresh_tables(cfg, seed=3)
    randoms = [i for i in range(1, 100)] + [103, ids["unknown"][0], ids["unknown_continuation"][0]]
    padding = list(range(len(world["tokens"]), 128))
    for i in randoms + padding:  # [unusedN], [MASK] (no T5 field), 龘 (no piece but unk), padding rows
        np.testing.assert_array_equal(emb[i], fresh_emb[i])
        np.testing.assert_array_equal(head[i], fresh_head[i])
    assert not np.allclose(fresh_tables(cfg, seed=4)[0][103], emb[103])  # the seed is the seed
    for path in (("encoder", "final_norm"), ("decoder", "layers_0")):  # everything else passes through
        a, b = loaded.params, params
        for k in path:
            a, b = a[k], b[k]
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
    assert result.report.counts == {"special": 4, "copied": 4, "averaged": 2, "random": 99 + 1 + 2,
                                    "padding": 128 - len(world["tokens"])}
    assert result.report.reserved_random == 100 and result.report.mean_pieces == 2.0
    assert "4 copied, 2 averaged (2.00 old pieces each)" in result.report.summary()


def test_forms_and_old_wordpiece(world):
    """Which old piece is "the same token" and how a token is cut, for both old tokenizer kinds."""
    sp_view = rv._old_view(world["sp"])
    bare = world["sp"].id_to_token(world["ids"]["copied_cjk"][1])
    forms = rv.new_tokens(BertJiebaTokenizer(world["tokens"]))[len(BERT_HEAD):]
    assert [f for _, f in forms] == ["glued"] * 3 + ["continuation", "word", "word", "glued", "continuation"]
    assert [t for t, _ in forms[3:]] == ["a", "data", "datamodel", "龘", "龘"] and forms[0][0] == bare
    assert sp_view.lookup(bare, "glued") == world["sp"].sp.piece_to_id(bare)
    assert sp_view.lookup(bare, "word") in (None, world["sp"].sp.piece_to_id(BOUNDARY + bare))
    # cutting a word keeps no lone boundary piece; an unknown character cuts to nothing
    lone = world["sp"].sp.piece_to_id(BOUNDARY)
    assert lone not in sp_view.cut("经济发展", "word") and sp_view.cut("龘", "glued") == []
    # an old WordPiece model: ## continuations, jieba words whole, unk pieces dropped
    old_wp = BertJiebaTokenizer(list(BERT_HEAD) + ["经", "济", "经济", "发", "展", "##data", "##d", "##a", "data"])
    view = rv._old_view(old_wp)
    assert view.lookup("data", "continuation") == old_wp.token_to_id("##data")
    assert view.lookup("data", "word") == old_wp.token_to_id("data")
    assert view.lookup("经济", "glued") == old_wp.token_to_id("经济")
    assert view.cut("dada", "continuation") == [old_wp.token_to_id("##d"), old_wp.token_to_id("##a")] * 2
    assert view.cut("经济发展", "glued") == [old_wp.token_to_id(t) for t in ("经济", "发", "展")]
    assert view.cut("龘", "glued") == []
    # a new sentencepiece vocabulary: ▁x is a word start, control pieces reserved
    forms = rv.new_tokens(world["sp"])
    assert forms[0] == ("<pad>", "reserved") and forms[1] == ("</s>", "reserved")
    for i in range(3, world["sp"].vocab_size):
        piece = world["sp"].id_to_token(i)
        if piece.startswith(BOUNDARY):
            assert forms[i] == (piece[1:], "word")


def test_same_vocabulary_is_the_identity(world):
    """Moving a model to the vocabulary it has keeps every row: its special pieces by field, the rest copied."""
    loaded = load_model(world["hf"])
    result = rv.revocab(loaded.cfg, loaded.params, loaded.tokenizer, loaded.tokenizer)
    assert result.cfg == loaded.cfg
    size = loaded.cfg.vocab_size
    assert result.report.counts == {"special": 3, "copied": size - 3, "averaged": 0, "random": 0, "padding": 0}
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), result.params,
                 loaded.params)


def test_convert_vocab_cli(world, tmp_path, capsys):
    import transformers

    dst = tmp_path / "out"
    assert main(["convert", str(world["hf"]), str(dst), "--vocab", str(world["dir"] / "vocab.txt")]) == 0
    out = capsys.readouterr().out
    assert "4 copied, 2 averaged" in out and "wrote" in out
    assert (dst / "vocab.txt").read_text(encoding="utf-8") == (world["dir"] / "vocab.txt").read_text(encoding="utf-8")
    model = transformers.MT5ForConditionalGeneration.from_pretrained(dst)
    assert model.config.vocab_size == len(world["tokens"]) and model.config.decoder_start_token_id == 101
    new_id, old_id = world["ids"]["copied_cjk"]
    np.testing.assert_array_equal(model.shared.weight.detach().numpy()[new_id],
                                  world["shared"][old_id].astype(np.float32))
    np.testing.assert_array_equal(model.lm_head.weight.detach().numpy()[new_id],
                                  world["head"][old_id].astype(np.float32))
    loaded = load_model(dst)  # the shipped vocab.txt is its tokenizer
    assert isinstance(loaded.tokenizer, BertJiebaTokenizer) and loaded.cfg.eos_token_id == 102
    assert main(["convert", str(world["hf"]), str(tmp_path / "bad"), "--vocab", str(tmp_path / "none.txt")]) == 2
    assert "not found" in capsys.readouterr().err


def pretrain_args(world, out, steps, **extra):
    values = {
        "name": "rv", "output_dir": str(out), "model.init": str(world["hf"]), "data.vocab": str(world["dir"] /
        "vocab.txt"), "data.corpus": str(world["dir"] / "docs.txt"), "data.max_source_len": 48,
        "data.max_target_len": 16, "data.batch_size": 8, "data.eval_every_nth": 10,
        "data.cache_dir": str(out / "cache"), "train.steps": steps, "train.log_every": 1, "checkpoint.every": 2,
        "checkpoint.asynchronous": False, "eval.every": 0, "log.tensorboard": False, "log.progress": "off",
        "log.peak_flops": 1e9, "model.dropout_rate": 0.0,
    }  # fmt: skip
    values.update(extra)
    return ["pretrain", *[f"{k}={v}" for k, v in values.items()]]


def test_pretrain_from_mt5_with_a_new_vocab_and_resume(world, tmp_path, capsys, monkeypatch):
    import orbax.checkpoint as ocp

    assert main(pretrain_args(world, tmp_path, 2)) == 0
    out = capsys.readouterr().out
    assert "re-vocabularised" in out and "4 copied, 2 averaged" in out and "finished: step 2" in out
    run = tp.training.run_folder.RunFolder(tmp_path / "rv")
    report = run.revocab_report()
    assert report["counts"]["copied"] == 4 and report["rows"] == 128
    cfg = run.model_config()
    assert cfg.vocab_size == 128 and cfg.eos_token_id == 102 and cfg.num_decoder_layers == 3  # the mT5's shape
    saved = run.run_config()
    assert saved["model"]["init"] == str(world["hf"].absolute()) and saved["model"]["dropout_rate"] == 0.0

    # resuming reads neither the init folder nor re-initialises: the checkpoint's weights go on
    def refuse(*a, **k):
        raise AssertionError("a resume must not load or re-vocabularise the init model")

    monkeypatch.setattr("t5pegasus.convert.model_folder.load_model", refuse)
    monkeypatch.setattr(rv, "revocab", refuse)
    with ocp.PyTreeCheckpointer() as c:
        at2 = c.restore(run.state_dir(2))["params"]
    assert main(pretrain_args(world, tmp_path, 3, **{"checkpoint.every": 1})) == 0
    out = capsys.readouterr().out
    assert "resuming rv from step 2" in out and "re-vocabularised" not in out and "finished: step 3" in out
    with ocp.PyTreeCheckpointer() as c:
        at3 = c.restore(run.state_dir(3))["params"]
    moved = np.abs(np.asarray(at3["shared"]["embedding"]) - np.asarray(at2["shared"]["embedding"])).max()
    assert 0 < moved < 0.1  # one more step from step 2's weights, not a fresh start
    # a resume with another model setting is refused by the loop's check
    assert main(pretrain_args(world, tmp_path, 4, **{"model.dropout_rate": 0.1})) == 2
    assert "model.dropout_rate" in capsys.readouterr().err


def test_pretrain_init_refusals_and_print_config(world, tmp_path, capsys):
    assert main(pretrain_args(world, tmp_path, 2, **{"model.preset": "tiny"})) == 2
    assert "drop model.preset" in capsys.readouterr().err
    assert main(pretrain_args(world, tmp_path, 2, **{"data.vocab": str(tmp_path / "missing.txt")})) == 2
    assert "missing.txt not found" in capsys.readouterr().err
    assert main([*pretrain_args(world, tmp_path, 2), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "init: " in printed and "vocab_size: 128" in printed and "decoder_start_token_id: 101" in printed
    # the same vocabulary as the folder's own: no re-vocabularisation, the mT5's own rows
    args = pretrain_args(world, tmp_path, 1, name="same", **{"data.vocab": str(world["hf"] / "spiece.model")})
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "re-vocabularised" not in out and "finished: step 1" in out
    cfg = json.loads((tmp_path / "same" / "model_config.json").read_text())
    assert cfg["vocab_size"] == world["sp"].vocab_size  # the folder's rows, not rounded up
    from t5pegasus.training import runconfig

    with pytest.raises(tp.errors.UserError, match="resolve it first"):
        runconfig.load(None, [f"model.init={world['hf']}"])


def _random_params(cfg, seed):
    init = rv._init_fn(cfg)
    params = tp.models.unbox(init(jax.random.PRNGKey(seed)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(rng.normal(size=x.shape), np.float32), params)  # biases non-zero too


def test_bert_wordpiece_to_wordpiece_moves_the_mlm_bias():
    """A BERT (tied MLM head with its own bias) from one vocab.txt to another: rows and bias entries alike, its
    special fields ([CLS] [SEP] [MASK] at other ids) from the old ones, a ## continuation from the ## piece."""
    old_tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "经", "济", "经济", "发", "展", "##data", "data"]
    new_tokens = list(BERT_HEAD) + ["经济", "发展", "##data", "data", "datadata"]
    old, new = BertJiebaTokenizer(old_tokens), BertJiebaTokenizer(new_tokens)
    cfg = tp.BertConfig.preset("tiny", vocab_size=len(old_tokens), with_mlm=True)
    params = _random_params(cfg, 5)
    result = rv.revocab(cfg, params, old, new)
    assert (result.cfg.vocab_size, result.cfg.cls_token_id, result.cfg.sep_token_id, result.cfg.mask_token_id,
            result.cfg.unk_token_id) == (len(new_tokens), 101, 102, 103, 100)
    emb, bias = np.asarray(result.params["word_embeddings"]["embedding"]), np.asarray(result.params["mlm_bias"])
    old_emb, old_bias = params["word_embeddings"]["embedding"], params["mlm_bias"]
    n = len(BERT_HEAD)
    expect = {0: [0], 100: [1], 101: [2], 102: [3], 103: [4], n: [7], n + 2: [10], n + 3: [11],
              n + 1: [8, 9],  # 发展: no old token, jieba + WordPiece cut it into 发 展
              n + 4: [11, 10]}  # datadata: data ##data
    for i, src in expect.items():
        np.testing.assert_allclose(emb[i], old_emb[src].mean(0), rtol=0, atol=1e-7, err_msg=new_tokens[i])
        np.testing.assert_allclose(bias[i], old_bias[src].mean(), rtol=0, atol=1e-7, err_msg=new_tokens[i])
    assert result.report.counts == {"special": 5, "copied": 3, "averaged": 2, "random": 99, "padding": 0}
    assert np.all(bias[1:100] == 0)  # the bias's own init (zeros) for [unusedN]


def test_gpt_to_a_sentencepiece_vocabulary(world):
    """A GPT from a WordPiece vocab to the sentencepiece model: ▁x pieces from word tokens, bare ones from ##."""
    old_tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "data", "##data", "model"]
    old = BertJiebaTokenizer(old_tokens)
    cfg = tp.GPTConfig.preset("tiny", vocab_size=len(old_tokens), pad_token_id=0, bos_token_id=2, eos_token_id=3)
    params = _random_params(cfg, 6)
    sp = world["sp"]
    result = rv.revocab(cfg, params, old, sp)
    assert (result.cfg.pad_token_id, result.cfg.eos_token_id, result.cfg.bos_token_id) == (0, 1, 1)
    emb, old_emb = np.asarray(result.params["token_embeddings"]["embedding"]), params["token_embeddings"]["embedding"]
    piece = sp.sp.piece_to_id
    np.testing.assert_array_equal(emb[piece(BOUNDARY + "data")], old_emb[4])
    np.testing.assert_array_equal(emb[piece("data")], old_emb[5])
    np.testing.assert_array_equal(emb[piece(BOUNDARY + "model")], old_emb[6])
    np.testing.assert_array_equal(emb[0], old_emb[0])  # pad
    np.testing.assert_array_equal(emb[1], old_emb[3])  # </s> is eos, the first field of its row ([SEP])


def test_cpm_sentencepiece_treats_cjk_tokens_as_words(world, tmp_path):
    """CPM's sentencepiece is trained on jieba-cut, space-joined text: its Chinese words start with ▁, so a
    CJK token matches `▁x` first and is cut as a word (CPM's jieba pass, the lone ▁ pieces dropped)."""
    docs = generated_documents(150, seed=1)
    train_sentencepiece(docs, tmp_path / "cpm.model", 90, cpm=True, model_type="bpe", character_coverage=1.0)
    cpm = SentencePieceTokenizer(tmp_path / "cpm.model", cpm=True)
    view = rv._old_view(cpm)
    piece = cpm.sp.piece_to_id
    assert piece(BOUNDARY + "我们") != cpm.unk_id and view.lookup("我们", "glued") == piece(BOUNDARY + "我们")
    assert piece("市场") != cpm.unk_id and view.lookup("市场", "glued") == piece("市场")  # else the bare one
    # "经济发展" is no piece: CPM's jieba cuts it into words, ▁发展 is one of its pieces, the lone ▁ dropped
    assert cpm.tokenize("经济发展") == [BOUNDARY, "经", "济", BOUNDARY + "发展"]
    assert view.cut("经济发展", "glued") == [piece("经"), piece("济"), piece(BOUNDARY + "发展")]
    assert view.cut("发展", "continuation") == [piece("发"), piece("展")]  # inside a word: bare pieces
