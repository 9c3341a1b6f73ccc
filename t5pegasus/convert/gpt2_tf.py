"""GPT-2 / CPM-LM <-> TF checkpoints: OpenAI GPT-2's names and `hparams.json` (both ways), and bert4keras' GPT-2
layout (import), which its CPM-LM release uses.

Names (openai/gpt-2 `model.py`): `model/wte` [vocab, d], `model/wpe` [n_ctx, d], per layer `model/h{i}/ln_1/{g,b}`,
`model/h{i}/attn/c_attn/{w,b}` with w [1, d, 3d] holding [q | k | v] on its last axis (a 1x1 convolution,
hence the leading 1), `model/h{i}/attn/c_proj/{w [1, d, d], b}`, `model/h{i}/ln_2/{g,b}`,
`model/h{i}/mlp/c_fc/{w [1, d, 4d], b}`, `model/h{i}/mlp/c_proj/{w [1, 4d, d], b}`, and `model/ln_f/{g,b}`.
The LM head is `wte` itself (tied), as in ours.

`hparams.json` holds only n_vocab, n_ctx, n_embd, n_head, n_layer (OpenAI's loader rejects other keys); the
rest is OpenAI's fixed choices: tanh GELU, 4d feed-forward, LayerNorm eps 1e-5, <|endoftext|> = n_vocab - 1.
A model that differs is still exported exactly, its full config in `t5pegasus_config.json`.

bert4keras (`build_transformer_model(model='gpt2')`, `variable_mapping()`: BERT's names with `bert/` -> `gpt/` and
`encoder` -> `transformer`): `gpt/embeddings/{word,position}_embeddings`, per layer
`gpt/transformer/layer_{i}/attention/input/LayerNorm/{gamma,beta}` (the pre-attention norm),
`.../attention/self/{query,key,value}/{kernel,bias}` (separate, [in, out]), `.../attention/output/dense`,
`.../input/LayerNorm` (the pre-feed-forward norm), `.../intermediate/dense`, `.../output/dense`, and
`gpt/output/LayerNorm`; the head is the word embedding (tied). Its `config.json` is bert4keras': `hidden_act`
"gelu" is the erf form there (bert4keras' `gelu_tanh` is ours "gelu"), LayerNorm eps is its fixed 1e-5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from t5pegasus.convert import gpt2_names
from t5pegasus.convert.bert_tf import attention_entries
from t5pegasus.convert.checkpoint_files import TensorSource, config_fields, read_native_config
from t5pegasus.convert.formats import TFFormat
from t5pegasus.convert.name_map import Entry, lookup, same
from t5pegasus.errors import UserError
from t5pegasus.families import GPTConfig

ROOT = "model/wte"
NATIVE_CONFIG = "hparams.json"


def entries(cfg: GPTConfig) -> list[Entry]:
    """The OpenAI GPT-2 names of a GPT model."""
    return gpt2_names.entries(cfg, "openai")


def check_exportable(cfg: GPTConfig) -> None:
    """OpenAI's layout derives the head size from n_embd / n_head."""
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
        raise UserError(f"OpenAI GPT-2 needs head_dim * num_heads == hidden_size; this model has {cfg.num_heads} x "
                        f"{cfg.head_dim} != {cfg.hidden_size}")


def native_config(cfg: GPTConfig) -> dict[str, dict[str, Any]]:
    """OpenAI's `hparams.json`."""
    return {NATIVE_CONFIG: {"n_vocab": cfg.vocab_size, "n_ctx": cfg.max_position_embeddings,
                            "n_embd": cfg.hidden_size, "n_head": cfg.num_heads, "n_layer": cfg.num_layers}}


def config_from_native(folder: Path, tensors: TensorSource) -> GPTConfig:
    """Our GPTConfig from OpenAI's `hparams.json` and its fixed choices (see the module doc)."""
    path, hp = read_native_config(folder, NATIVE_CONFIG, "GPT-2")
    with config_fields(path, " (OpenAI hparams.json has n_vocab, n_ctx, n_embd, n_head, n_layer)"):
        d, heads, vocab = hp["n_embd"], hp["n_head"], hp["n_vocab"]
        return GPTConfig(vocab_size=vocab, hidden_size=d, num_layers=hp["n_layer"], num_heads=heads,
                         head_dim=d // heads, intermediate_size=4 * d, max_position_embeddings=hp["n_ctx"],
                         hidden_act="gelu", layer_norm_epsilon=1e-5, pad_token_id=0, bos_token_id=vocab - 1,
                         eos_token_id=vocab - 1)


B4K_ROOT = "gpt/embeddings/word_embeddings"
B4K_CONFIG = "config.json"
# bert4keras activation names -> ours
_B4K_ACT = {"gelu": "gelu-erf", "gelu_erf": "gelu-erf", "gelu_tanh": "gelu", "relu": "relu", "swish": "silu"}


def bert4keras_entries(cfg: GPTConfig) -> list[Entry]:
    """bert4keras' GPT-2 names of a GPT model (see the module doc)."""
    d, h, hd, ff = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size

    def norm(name: str, path: str) -> list[Entry]:
        return [same(f"{name}/LayerNorm/gamma", f"{path}/scale", (d,)),
                same(f"{name}/LayerNorm/beta", f"{path}/bias", (d,))]

    def dense(name: str, path: str, n_in: int, n_out: int) -> list[Entry]:
        return [same(f"{name}/kernel", f"{path}/kernel", (n_in, n_out)), same(f"{name}/bias", f"{path}/bias", (n_out,))]

    out = [same(B4K_ROOT, "token_embeddings/embedding", (cfg.vocab_size, d)),
           same("gpt/embeddings/position_embeddings", "position_embeddings/embedding",
                (cfg.max_position_embeddings, d))]
    for i in range(cfg.num_layers):
        name, path = f"gpt/transformer/layer_{i}", f"layers_{i}"
        out += norm(f"{name}/attention/input", f"{path}/attention_norm")
        out += attention_entries(name, f"{path}/attention", d, h, hd)
        out += [
                *norm(f"{name}/input", f"{path}/mlp_norm"),
                *dense(f"{name}/intermediate/dense", f"{path}/mlp/wi", d, ff),
                *dense(f"{name}/output/dense", f"{path}/mlp/wo", ff, d)]
    return [*out, *norm("gpt/output", "final_norm")]


def bert4keras_config(cfg: GPTConfig) -> dict[str, dict[str, Any]]:
    """bert4keras' `config.json` of a GPT model."""
    act = {v: k for k, v in reversed(_B4K_ACT.items())}[cfg.hidden_act]
    return {B4K_CONFIG: {"vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
                         "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
                         "attention_head_size": cfg.head_dim, "intermediate_size": cfg.intermediate_size,
                         "max_position_embeddings": cfg.max_position_embeddings, "hidden_act": act}}


def bert4keras_config_from_native(folder: Path, tensors: TensorSource) -> GPTConfig:
    """Our GPTConfig from bert4keras' `config.json` (its "gelu" is erf; eps 1e-5). The special ids are the
    tokenizer's (CPM-LM's sentencepiece): the model folder aligns them at load time."""
    path, c = read_native_config(folder, B4K_CONFIG, "bert4keras GPT-2")
    with config_fields(path, " (a bert4keras config.json has vocab_size, hidden_size, num_hidden_layers, "
                             "num_attention_heads, intermediate_size, max_position_embeddings, hidden_act)"):
        d, heads = c["hidden_size"], c["num_attention_heads"]
        return GPTConfig(vocab_size=c["vocab_size"], hidden_size=d, num_layers=c["num_hidden_layers"],
                         num_heads=heads, head_dim=c.get("attention_head_size") or d // heads,
                         intermediate_size=c["intermediate_size"],
                         max_position_embeddings=c["max_position_embeddings"],
                         hidden_act=lookup(_B4K_ACT, c.get("hidden_act", "gelu"), "bert4keras hidden_act"),
                         layer_norm_epsilon=1e-5, pad_token_id=0, bos_token_id=0, eos_token_id=0)


BERT4KERAS = TFFormat("GPT-2 (bert4keras, CPM-LM)", B4K_ROOT, lambda cfg, t5_norm=None: bert4keras_entries(cfg),
                      lambda cfg: None, bert4keras_config, bert4keras_config_from_native)
FORMAT = TFFormat("GPT-2 (OpenAI)", ROOT, lambda cfg, t5_norm=None: entries(cfg), check_exportable, native_config,
                  config_from_native, also_reads=(BERT4KERAS,))
