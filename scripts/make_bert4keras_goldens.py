"""Write the bert4keras golden folders under tests/golden/: tiny random-weight models built by bert4keras 0.11.5
itself (the library the T5 PEGASUS release was built and loaded with), saved in the releases' own TF checkpoint
layout, with recorded inputs and bert4keras' outputs. tests/test_bert4keras_golden.py checks our import, models
and tokenizer against them without bert4keras.

Install (into the shared environment; bert4keras and tf-keras are never a test or runtime dependency):

    pip install tf-keras==2.21.0
    pip install --no-deps bert4keras==0.11.5

Rerun (it sets TF_KERAS=1 TF_USE_LEGACY_KERAS=1 itself, before TensorFlow is imported):

    python scripts/make_bert4keras_goldens.py            # rewrites tests/golden/*_b4k/
    python scripts/make_bert4keras_goldens.py --out /tmp/g

Folders (each: `checkpoint`, `model.ckpt.index`, `model.ckpt.data-00000-of-00001`, the bert4keras config file,
`golden.json` with how it was built, `golden.npz` with inputs and outputs):

- t5_pegasus_b4k/  `model='mt5.1.1'` (T5 PEGASUS), `config.json` as the release ships it, `vocab.txt` (BERT
  layout: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103), `tokenizer.json` (ids that bert4keras'
  `Tokenizer(vocab, do_lower_case=True, pre_tokenize=lambda s: jieba.cut(s, HMM=False))` gives);
  golden.npz: encoder_ids, decoder_ids, probs (the model's softmax output).
- simbert_b4k/     `model='bert', application='unilm', with_pool='linear'` (SimBERT's shape), `bert_config.json`,
  `vocab.txt`; golden.npz: token_ids, segment_ids, pooled (the linear pooler over [CLS], SimBERT's sentence
  vector), probs (the MLM softmax).
- bert_cln_b4k/    `model='bert', application='lm'` with `layer_norm_cond` = a label embedding (the bert4keras
  conditional LM example's shape); `bert_config.json`; bert4keras has no checkpoint names for the conditional
  weights, so they are in `condition.npz` under `<keras layer>/<weight>` (label_embedding, and per LayerNorm
  `gamma_dense` / `beta_dense`, each [condition, hidden]); golden.npz: token_ids, segment_ids, labels, probs.
- cpm_lm_b4k/      `model='gpt2'` at a tiny CPM-LM-like shape (bert4keras' own `gpt/...` names, which its CPM-LM
  checkpoint uses), `config.json`; golden.npz: token_ids, probs.

Weights are random (seeded) everywhere, norms and biases included, so a swapped or transposed tensor shows.
bert4keras' `save_weights_as_checkpoint` needs TF1 graph mode; instead the checkpoint names come from its
`variable_mapping()`, each value passes through its `create_variable` (which transposes what its loader
transposes back), and the tensors are written with TF's SaveV2 op under those plain names. Every folder is read
back by bert4keras' own `load_weights_from_checkpoint` into a second model, whose outputs must be identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

os.environ["TF_KERAS"] = "1"
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import bert4keras  # noqa: E402
import jieba  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from bert4keras.backend import K, keras  # noqa: E402
from bert4keras.models import build_transformer_model  # noqa: E402
from bert4keras.tokenizers import Tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "model.ckpt"

# --- the vocabulary -------------------------------------------------------------------------------------------

CHARS = ("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后小么"
         "心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样"
         "现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打"
         "便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总"
         "才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王"
         "果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科"
         "怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父"
         "强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双历越史商"
         "千片容研像找友孩站广改议形委早房音火际则首单据导影失拿网香似斯专石若兵弟谁校读志飞观争究包组造落视济喜"
         "离虽坏兴刚门旁洞讨模型摘要处械习然")
WORDS = ("北京", "天安门", "我们", "中国", "人民", "今天", "天气", "非常", "喜欢", "自然语言", "处理", "机器", "学习",
         "旁边", "讨论", "模型", "生成", "摘要", "问题", "时间", "已经", "研究")
PUNCT_CJK = "，。！？、：；“”（）《》…"
ASCII_WORDS = ("hello", "world", "run", "test", "time", "the", "model", "t5", "pegasus", "bert", "caf")
PIECES = ("##s", "##ing", "##ed", "##er", "##ly", "##ning", "##e", "##0", "##1", "##2", "##3", "##的", "##们")


def build_vocab() -> list[str]:
    """A small BERT-layout WordPiece vocab: [PAD] 0, [unused1..99], [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103
    (as bert-base-chinese and the T5 PEGASUS release), then ASCII, CJK punctuation, characters, words, pieces."""
    tokens = ["[PAD]", *(f"[unused{i}]" for i in range(1, 100)), "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<S>", "<T>"]
    ascii_chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    for t in (*ascii_chars, *PUNCT_CJK, *CHARS, *WORDS, *ASCII_WORDS, *PIECES):
        if t not in tokens:
            tokens.append(t)
    assert tokens.index("[UNK]") == 100 and tokens.index("[MASK]") == 103
    return tokens


SENTENCES = (
    "北京天安门，我们今天去看看。",           # in-vocab jieba words and characters
    "我喜欢自然语言处理和机器学习！",         # 自然语言 / 机器 / 学习 are vocab words
    "研究生们在鼹鼠洞旁边讨论模型。",         # 研究生: jieba word not in vocab -> characters; 鼹 鼠: unknown characters
    "Hello World, running tests 123 times.",  # lower-casing, ## pieces, digits
    "T5 PEGASUS 生成的摘要：qzx 很好",       # qzx: q is known, ##z is not -> bert4keras gives one [UNK] for the word
    "Café naïve ☃ 天气非常好…",               # accents stripped; ☃ (So) is no punctuation: one unknown word
)


# --- bert4keras model helpers ---------------------------------------------------------------------------------

def randomize(model: keras.Model, rng: np.random.Generator) -> None:
    """Seeded random values in every trainable weight: norms around 1, biases and offsets small but non-zero,
    kernels ~ 1/sqrt(fan_in), embedding tables and the
    T5 LM head O(1); the zero-initialised conditional projections too."""
    values = []
    for w in model.trainable_weights:
        shape, name = tuple(w.shape), w.name
        if len(shape) == 1:
            v = (1.0 + 0.2 * rng.standard_normal(shape)) if "gamma" in name else 0.2 * rng.standard_normal(shape)
        elif "embeddings" in name:
            v = 0.7 * rng.standard_normal(shape)
        elif name.startswith("Decoder-Output-LM/"):  # after the d**-0.5 scale: logits of O(1), not near-uniform
            v = 3.0 * rng.standard_normal(shape)
        else:
            v = rng.standard_normal(shape) / np.sqrt(shape[0])
        values.append((w, v.astype(np.float32)))
    K.batch_set_value(values)


def checkpoint_tensors(transformer) -> dict[str, np.ndarray]:
    """{checkpoint name: value} as bert4keras' save_weights_as_checkpoint would write them: names from
    variable_mapping() (prefixed, restricted to built layers), values through create_variable()."""
    mapping = {transformer.prefixed(k): v for k, v in transformer.variable_mapping().items()}
    mapping = {k: v for k, v in mapping.items() if k in transformer.layers}
    out = {}
    for layer_name, names in mapping.items():
        layer = transformer.layers[layer_name]
        for name, value in zip(names, K.batch_get_value(layer.trainable_weights), strict=False):  # as bert4keras
            _, value = transformer.create_variable(name, value)
            assert name not in out, name
            out[name] = np.asarray(value, np.float32)
    return out


def unsaved_weights(transformer) -> list[str]:
    """Trainable weights that variable_mapping() gives no checkpoint name (they cannot travel in the checkpoint)."""
    mapping = {transformer.prefixed(k): v for k, v in transformer.variable_mapping().items()}
    saved = set()
    for layer_name, names in mapping.items():
        if layer_name in transformer.layers:
            saved.update(id(w) for w in transformer.layers[layer_name].trainable_weights[:len(names)])
    return [w.name for w in transformer.model.trainable_weights if id(w) not in saved]


def write_checkpoint(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    """SaveV2 under the plain names (no object-graph suffixes), plus the `checkpoint` state file."""
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=str(folder / PREFIX), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{PREFIX}"\nall_model_checkpoint_paths: "{PREFIX}"\n',
                                       encoding="utf-8")
    listed = dict(tf.train.list_variables(str(folder / PREFIX)))
    assert set(listed) == set(names), sorted(set(listed) ^ set(names))
    return folder / PREFIX


def predict(model: keras.Model, inputs: list[np.ndarray]):
    out = model.predict([x.astype(np.float32) for x in inputs], verbose=0)
    return [np.asarray(o) for o in out] if isinstance(out, list) else np.asarray(out)


def assert_same(a, b, what: str) -> None:
    for x, y in zip(a if isinstance(a, list) else [a], b if isinstance(b, list) else [b], strict=True):
        np.testing.assert_array_equal(x, y, err_msg=f"{what}: the model rebuilt from the checkpoint differs")


def pad(rows: list[list[int]], length: int | None = None) -> np.ndarray:
    length = length or max(len(r) for r in rows)
    return np.array([r + [0] * (length - len(r)) for r in rows], np.int32)


def fresh_folder(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def provenance(build: dict, unsaved: list[str], **extra) -> dict:
    return {"bert4keras": bert4keras.__version__, "tensorflow": tf.__version__,
            "tf_keras": metadata.version("tf-keras"), "jieba": jieba.__version__,
            "build_transformer_model": build, "weights_not_in_checkpoint": unsaved, **extra}


def tokenizer(vocab_path: Path) -> Tokenizer:
    return Tokenizer(str(vocab_path), do_lower_case=True, pre_tokenize=lambda s: jieba.cut(s, HMM=False))


# --- the four models -------------------------------------------------------------------------------------------

def make_t5_pegasus(out: Path, vocab: list[str]) -> None:
    folder = fresh_folder(out / "t5_pegasus_b4k")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = {"hidden_act": ["gelu", "linear"], "hidden_dropout_prob": 0.1, "hidden_size": 32,
              "initializer_range": 0.02, "intermediate_size": 48, "num_attention_heads": 4,
              "attention_head_size": 8, "num_hidden_layers": 2, "vocab_size": len(vocab),
              "relative_attention_num_buckets": 32, "attention_scale": False, "is_dropout": True}
    write_json(folder / "config.json", config)
    build = dict(model="mt5.1.1", return_keras_model=False, name="T5")
    t5 = build_transformer_model(str(folder / "config.json"), None, **build)
    randomize(t5.model, np.random.default_rng(1501))
    prefix = write_checkpoint(folder, checkpoint_tensors(t5))

    tok = tokenizer(folder / "vocab.txt")
    encoded = [{"text": s, "tokens": tok.tokenize(s), "ids": tok.encode(s)[0]} for s in SENTENCES]
    write_json(folder / "tokenizer.json", {
        "tokenizer": "bert4keras.tokenizers.Tokenizer(vocab.txt, do_lower_case=True, "
                     "pre_tokenize=lambda s: jieba.cut(s, HMM=False)); ids = encode(text)[0]",
        "sentences": encoded})

    rng = np.random.default_rng(7)
    # Long enough rows that the relative buckets reach their log range (encoder distance > 8, decoder > 16,
    # decoder-to-encoder > 16); padding (0) at the end of rows 1 and 2; no 0 inside a row.
    enc_rows = [encoded[0]["ids"] + encoded[1]["ids"][1:], [101, *rng.integers(104, len(vocab), 40).tolist(), 102],
                [101, *rng.integers(104, len(vocab), 25).tolist(), 102]]
    dec_rows = [[101, *encoded[2]["ids"][1:-1]], [101, *rng.integers(104, len(vocab), 23).tolist()],
                [101, *rng.integers(104, len(vocab), 9).tolist()]]
    enc, dec = pad(enc_rows), pad(dec_rows)
    probs = predict(t5.model, [enc, dec])
    again = build_transformer_model(str(folder / "config.json"), str(prefix), **build)
    assert_same(probs, predict(again.model, [enc, dec]), "t5_pegasus")
    np.savez_compressed(folder / "golden.npz", encoder_ids=enc, decoder_ids=dec, probs=probs.astype(np.float32))
    write_json(folder / "golden.json", provenance(build, unsaved_weights(t5), outputs={
        "probs": "T5.model([encoder_ids, decoder_ids]): softmax over the vocab, [batch, decoder length, vocab]; "
                 "0 is padding (rows end in it)"}))


def make_simbert(out: Path, vocab: list[str]) -> None:
    folder = fresh_folder(out / "simbert_b4k")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = {"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
              "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64, "max_position_embeddings": 64,
              "num_attention_heads": 4, "num_hidden_layers": 2, "type_vocab_size": 2, "vocab_size": len(vocab)}
    write_json(folder / "bert_config.json", config)
    build = dict(model="bert", application="unilm", with_pool="linear", return_keras_model=False)
    bert = build_transformer_model(str(folder / "bert_config.json"), None, **build)
    randomize(bert.model, np.random.default_rng(1502))
    prefix = write_checkpoint(folder, checkpoint_tensors(bert))

    tok = tokenizer(folder / "vocab.txt")
    pairs = [(SENTENCES[0], SENTENCES[1]), (SENTENCES[3], SENTENCES[2]), (SENTENCES[1], SENTENCES[5])]
    encoded = [tok.encode(a, b) for a, b in pairs]
    ids, segments = pad([e[0] for e in encoded]), pad([e[1] for e in encoded])
    pooled, probs = predict(bert.model, [ids, segments])
    again = build_transformer_model(str(folder / "bert_config.json"), str(prefix), **build)
    assert_same([pooled, probs], predict(again.model, [ids, segments]), "simbert")
    np.savez_compressed(folder / "golden.npz", token_ids=ids, segment_ids=segments, pooled=pooled, probs=probs)
    write_json(folder / "golden.json", provenance(build, unsaved_weights(bert), pairs=pairs, outputs={
        "pooled": "Pooler-Dense (linear) over the [CLS] vector: SimBERT's sentence vector, [batch, hidden]",
        "probs": "MLM softmax, [batch, length, vocab]; the UniLM mask from segment_ids, 0 is padding"}))


def make_bert_cln(out: Path, vocab_size: int) -> None:
    folder = fresh_folder(out / "bert_cln_b4k")
    config = {"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
              "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64, "max_position_embeddings": 64,
              "num_attention_heads": 4, "num_hidden_layers": 2, "type_vocab_size": 2, "vocab_size": vocab_size}
    write_json(folder / "bert_config.json", config)
    num_labels, cond_size = 2, 16

    def build(checkpoint):
        label_in = keras.layers.Input(shape=(1,), name="Input-Label")
        c = keras.layers.Embedding(num_labels, cond_size, name="Label-Embedding")(label_in)
        c = keras.layers.Reshape((cond_size,))(c)
        bert = build_transformer_model(str(folder / "bert_config.json"), checkpoint, application="lm",
                                       layer_norm_cond=c, additional_input_layers=label_in,
                                       return_keras_model=False)
        return bert

    bert = build(None)
    randomize(bert.model, np.random.default_rng(1503))
    prefix = write_checkpoint(folder, checkpoint_tensors(bert))
    cond: dict[str, np.ndarray] = {"label_embedding": K.get_value(bert.model.get_layer("Label-Embedding").embeddings)}
    for name, layer in bert.layers.items():
        if getattr(layer, "conditional", False):
            cond[f"{name}/gamma_dense"] = K.get_value(layer.gamma_dense.kernel)
            cond[f"{name}/beta_dense"] = K.get_value(layer.beta_dense.kernel)
            assert not hasattr(layer, "hidden_dense")
    np.savez_compressed(folder / "condition.npz", **cond)

    rng = np.random.default_rng(9)
    rows = [[101, *rng.integers(104, vocab_size, 14).tolist(), 102], [101, *rng.integers(104, vocab_size, 9).tolist()]]
    ids = pad(rows + rows)  # the same two rows under label 0 and label 1
    segments = np.zeros_like(ids)
    labels = np.array([[0], [0], [1], [1]], np.int32)
    probs = predict(bert.model, [ids, segments, labels])

    again = build(str(prefix))
    again.model.get_layer("Label-Embedding").set_weights([cond["label_embedding"]])
    for name, layer in again.layers.items():
        if getattr(layer, "conditional", False):
            layer.gamma_dense.set_weights([cond[f"{name}/gamma_dense"]])
            layer.beta_dense.set_weights([cond[f"{name}/beta_dense"]])
    assert_same(probs, predict(again.model, [ids, segments, labels]), "bert_cln")
    assert np.abs(probs[0] - probs[2]).max() > 1e-3, "the label does not change the output"
    np.savez_compressed(folder / "golden.npz", token_ids=ids, segment_ids=segments, labels=labels, probs=probs)
    unsaved = unsaved_weights(bert)
    write_json(folder / "golden.json", provenance(
        {"model": "bert", "application": "lm", "layer_norm_cond": f"Embedding({num_labels}, {cond_size}) of the "
         "label input, reshaped to [batch, 16]", "additional_input_layers": "the label input"}, unsaved,
        condition="condition.npz: label_embedding [labels, 16]; per conditional LayerNormalization layer "
                  "'<layer>/gamma_dense' and '<layer>/beta_dense' [16, hidden] (gamma + c @ gamma_dense, "
                  "beta + c @ beta_dense); bert4keras' variable_mapping has no names for them",
        outputs={"probs": "MLM softmax [batch, length, vocab] under the LM (causal) mask; rows 0-1 label 0, rows "
                          "2-3 the same ids under label 1; 0 is padding"}))


def make_cpm_lm(out: Path) -> None:
    folder = fresh_folder(out / "cpm_lm_b4k")
    config = {"vocab_size": 300, "hidden_size": 32, "attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.1,
              "hidden_act": "gelu", "initializer_range": 0.02, "intermediate_size": 128,
              "max_position_embeddings": 64, "num_attention_heads": 4, "num_hidden_layers": 2}
    write_json(folder / "config.json", config)
    build = dict(model="gpt2", return_keras_model=False)
    gpt = build_transformer_model(str(folder / "config.json"), None, **build)
    randomize(gpt.model, np.random.default_rng(1504))
    prefix = write_checkpoint(folder, checkpoint_tensors(gpt))
    rng = np.random.default_rng(11)
    ids = pad([rng.integers(1, 300, 20).tolist(), rng.integers(1, 300, 12).tolist()])
    probs = predict(gpt.model, [ids])
    again = build_transformer_model(str(folder / "config.json"), str(prefix), **build)
    assert_same(probs, predict(again.model, [ids]), "cpm_lm")
    np.savez_compressed(folder / "golden.npz", token_ids=ids, probs=probs)
    write_json(folder / "golden.json", provenance(build, unsaved_weights(gpt), outputs={
        "probs": "LM softmax [batch, length, vocab] (causal, tied head); 0 is padding (at the end of row 1)"}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "golden")
    args = parser.parse_args()
    assert bert4keras.__version__ == "0.11.5", bert4keras.__version__
    jieba.setLogLevel(60)
    tf.get_logger().setLevel("ERROR")
    vocab = build_vocab()
    make_t5_pegasus(args.out, vocab)
    make_simbert(args.out, vocab)
    make_bert_cln(args.out, len(vocab))
    make_cpm_lm(args.out)
    for folder in sorted(args.out.glob("*_b4k")):
        size = sum(f.stat().st_size for f in folder.iterdir())
        print(f"{folder}: {size / 1024:.0f} KiB, round trip through load_weights_from_checkpoint identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
