"""BERT (UniLM, SimBERT) <-> Google BERT TF checkpoint names, shapes and `bert_config.json`.

Names (google-research/bert, also what bert4keras reads and writes): `bert/embeddings/{word,position,
token_type}_embeddings`, `bert/embeddings/LayerNorm/{gamma,beta}`, `bert/encoder/layer_{i}/attention/self/
{query,key,value}/{kernel,bias}`, `.../attention/output/dense`, `.../attention/output/LayerNorm`,
`.../intermediate/dense`, `.../output/dense`, `.../output/LayerNorm`, `bert/pooler/dense`, and the MLM head
`cls/predictions/transform/dense`, `cls/predictions/transform/LayerNorm`, `cls/predictions/output_bias` (its
decoder is the word embedding matrix: no tensor). Kernels are [in, out].

A model with both pooler and MLM head is what Google pretrained with next-sentence prediction, whose head
`cls/seq_relationship/{output_weights [2, d], output_bias}` we do not have: it is written as zeros (a 50/50
prediction) so loaders find every tensor, and dropped on import.

`hidden_act` follows HF / bert4keras: "gelu" is the erf form (Google's own code uses the tanh approximation,
which we call "gelu_new"); the config file carries what matters and `t5pegasus_config.json` the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from t5pegasus.convert.bert_hf import _ACT as ACT_FROM_NAME
from t5pegasus.convert.bert_hf import _ACT_TO_HF as ACT_TO_NAME
from t5pegasus.convert.checkpoint_files import TensorSource, config_fields, read_native_config
from t5pegasus.convert.formats import TFFormat
from t5pegasus.convert.name_map import Entry, constant, lookup, reshaped, same
from t5pegasus.errors import UserError
from t5pegasus.families import BertConfig

ROOT = "bert/embeddings/word_embeddings"
NATIVE_CONFIG = "bert_config.json"


def attention_entries(name: str, path: str, d: int, h: int, hd: int) -> list[Entry]:
    """Google BERT's attention names under `name` (`attention/self/{query,key,value}`, `attention/output/dense`,
    kernels [in, out] with biases), which bert4keras keeps for its GPT-2 too, onto our attention at `path`."""
    out = []
    for n in ("query", "key", "value"):
        out += [reshaped(f"{name}/attention/self/{n}/kernel", (d, h * hd), f"{path}/{n}/kernel", (d, h, hd)),
                reshaped(f"{name}/attention/self/{n}/bias", (h * hd,), f"{path}/{n}/bias", (h, hd))]
    return [*out, reshaped(f"{name}/attention/output/dense/kernel", (h * hd, d), f"{path}/out/kernel", (h, hd, d)),
            same(f"{name}/attention/output/dense/bias", f"{path}/out/bias", (d,))]


def entries(cfg: BertConfig) -> list[Entry]:
    """The Google BERT names of a BERT model."""
    d, h, hd, ff, v = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size

    def dense(name: str, path: str, n_in: int, n_out: int) -> list[Entry]:
        return [same(f"{name}/kernel", f"{path}/kernel", (n_in, n_out)), same(f"{name}/bias", f"{path}/bias", (n_out,))]

    def norm(name: str, path: str) -> list[Entry]:
        return [same(f"{name}/gamma", f"{path}/scale", (d,)), same(f"{name}/beta", f"{path}/bias", (d,))]

    out = [same(ROOT, "word_embeddings/embedding", (v, d)),
           same("bert/embeddings/token_type_embeddings", "segment_embeddings/embedding", (cfg.type_vocab_size, d)),
           same("bert/embeddings/position_embeddings", "position_embeddings/embedding",
                (cfg.max_position_embeddings, d)),
           *norm("bert/embeddings/LayerNorm", "embeddings_norm")]
    for i in range(cfg.num_layers):
        name, path = f"bert/encoder/layer_{i}", f"layers_{i}"
        out += attention_entries(name, f"{path}/attention", d, h, hd)
        out += [
                *norm(f"{name}/attention/output/LayerNorm", f"{path}/attention_norm"),
                *dense(f"{name}/intermediate/dense", f"{path}/mlp/wi", d, ff),
                *dense(f"{name}/output/dense", f"{path}/mlp/wo", ff, d),
                *norm(f"{name}/output/LayerNorm", f"{path}/mlp_norm")]
    if cfg.with_pooler:
        out += dense("bert/pooler/dense", "pooler", d, d)
    if cfg.with_mlm:
        out += [*dense("cls/predictions/transform/dense", "mlm_transform", d, d),
                *norm("cls/predictions/transform/LayerNorm", "mlm_norm"),
                same("cls/predictions/output_bias", "mlm_bias", (v,))]
    if cfg.with_pooler and cfg.with_mlm:
        out += [constant("cls/seq_relationship/output_weights", np.zeros((2, d), np.float32)),
                constant("cls/seq_relationship/output_bias", np.zeros((2,), np.float32))]
    return out


def check_exportable(cfg: BertConfig) -> None:
    """Google BERT has no conditional LayerNorm and derives the head size from hidden_size / heads."""
    if cfg.conditional_layer_norm:
        raise UserError("Google BERT checkpoints have no conditional LayerNorm; its condition projections "
                        "cannot be saved")
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
        raise UserError(f"Google BERT needs head_dim * num_heads == hidden_size; this model has {cfg.num_heads} x "
                        f"{cfg.head_dim} != {cfg.hidden_size}")


def native_config(cfg: BertConfig) -> dict[str, dict[str, Any]]:
    """`bert_config.json` with Google's fields (plus HF's layer_norm_eps, which Google's code ignores)."""
    return {NATIVE_CONFIG: {
        "attention_probs_dropout_prob": cfg.dropout_rate, "hidden_act": ACT_TO_NAME[cfg.hidden_act],
        "hidden_dropout_prob": cfg.dropout_rate, "hidden_size": cfg.hidden_size,
        "initializer_range": cfg.initializer_range, "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings, "num_attention_heads": cfg.num_heads,
        "num_hidden_layers": cfg.num_layers, "type_vocab_size": cfg.type_vocab_size, "vocab_size": cfg.vocab_size,
        "layer_norm_eps": cfg.layer_norm_epsilon,
    }}


def config_from_native(folder: Path, tensors: TensorSource) -> BertConfig:
    """Our BertConfig from `bert_config.json`; pooler and MLM head presence are read from the tensors."""
    path, hf = read_native_config(folder, NATIVE_CONFIG, "BERT")
    act = lookup(ACT_FROM_NAME, hf.get("hidden_act", "gelu"), f"{path}: hidden_act")
    with config_fields(path):
        hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
        return BertConfig(
            vocab_size=hf["vocab_size"], hidden_size=hidden, num_layers=hf["num_hidden_layers"], num_heads=heads,
            head_dim=hidden // heads, intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2), hidden_act=act,
            layer_norm_epsilon=hf.get("layer_norm_eps", 1e-12), dropout_rate=hf.get("hidden_dropout_prob", 0.1),
            initializer_range=hf.get("initializer_range", 0.02),
            with_pooler=tensors.has("bert/pooler/dense/kernel"),
            with_mlm=tensors.has("cls/predictions/transform/dense/kernel"),
        )


FORMAT = TFFormat("BERT (Google)", ROOT, lambda cfg, t5_norm=None: entries(cfg), check_exportable, native_config,
                  config_from_native)
