"""GPT-2 / CPM-LM <-> OpenAI GPT-2 TF checkpoint names, shapes and `hparams.json`.

Names (openai/gpt-2 `model.py`): `model/wte` [vocab, d], `model/wpe` [n_ctx, d], per layer `model/h{i}/ln_1/{g,b}`,
`model/h{i}/attn/c_attn/{w,b}` with w [1, d, 3d] holding [q | k | v] on its last axis (a 1x1 convolution,
hence the leading 1), `model/h{i}/attn/c_proj/{w [1, d, d], b}`, `model/h{i}/ln_2/{g,b}`,
`model/h{i}/mlp/c_fc/{w [1, d, 4d], b}`, `model/h{i}/mlp/c_proj/{w [1, 4d, d], b}`, and `model/ln_f/{g,b}`.
The LM head is `wte` itself (tied), as in ours.

`hparams.json` holds only n_vocab, n_ctx, n_embd, n_head, n_layer (OpenAI's loader rejects other keys); the
rest is OpenAI's fixed choices: tanh GELU, 4d feed-forward, LayerNorm eps 1e-5, <|endoftext|> = n_vocab - 1.
A model that differs is still exported exactly, its full config in `t5pegasus_config.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from t5pegasus.convert.checkpoint_files import TensorSource, read_json
from t5pegasus.convert.formats import TFFormat
from t5pegasus.convert.name_map import Entry, reshaped, same
from t5pegasus.errors import UserError
from t5pegasus.families import GPTConfig

ROOT = "model/wte"
NATIVE_CONFIG = "hparams.json"


def _fused_qkv(name: str, d: int, h: int, hd: int, path: str) -> Entry:
    """`c_attn/w` [1, d, 3*h*hd] from our query, key, value kernels [d, h, hd]."""
    width = h * hd
    paths = tuple(f"{path}/{n}/kernel" for n in ("query", "key", "value"))
    return Entry(name, (1, d, 3 * width), paths, ((d, h, hd),) * 3,
                 lambda q, k, v: np.concatenate([x.reshape(d, width) for x in (q, k, v)], axis=1)[None],
                 lambda w: tuple(w[0, :, j * width:(j + 1) * width].reshape(d, h, hd) for j in range(3)))


def _fused_qkv_bias(name: str, h: int, hd: int, path: str) -> Entry:
    width = h * hd
    paths = tuple(f"{path}/{n}/bias" for n in ("query", "key", "value"))
    return Entry(name, (3 * width,), paths, ((h, hd),) * 3,
                 lambda q, k, v: np.concatenate([x.reshape(width) for x in (q, k, v)]),
                 lambda b: tuple(b[j * width:(j + 1) * width].reshape(h, hd) for j in range(3)))


def entries(cfg: GPTConfig) -> list[Entry]:
    """The OpenAI GPT-2 names of a GPT model."""
    d, h, hd, ff = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size

    def norm(name: str, path: str) -> list[Entry]:
        return [same(f"{name}/g", f"{path}/scale", (d,)), same(f"{name}/b", f"{path}/bias", (d,))]

    def conv(name: str, path: str, n_in: int, n_out: int, our_in: tuple[int, ...] | None = None) -> list[Entry]:
        return [reshaped(f"{name}/w", (1, n_in, n_out), f"{path}/kernel", our_in or (n_in, n_out)),
                same(f"{name}/b", f"{path}/bias", (n_out,))]

    out = [same(ROOT, "token_embeddings/embedding", (cfg.vocab_size, d)),
           same("model/wpe", "position_embeddings/embedding", (cfg.max_position_embeddings, d))]
    for i in range(cfg.num_layers):
        name, path = f"model/h{i}", f"layers_{i}"
        out += [*norm(f"{name}/ln_1", f"{path}/attention_norm"),
                _fused_qkv(f"{name}/attn/c_attn/w", d, h, hd, f"{path}/attention"),
                _fused_qkv_bias(f"{name}/attn/c_attn/b", h, hd, f"{path}/attention"),
                *conv(f"{name}/attn/c_proj", f"{path}/attention/out", h * hd, d, (h, hd, d)),
                *norm(f"{name}/ln_2", f"{path}/mlp_norm"),
                *conv(f"{name}/mlp/c_fc", f"{path}/mlp/wi", d, ff),
                *conv(f"{name}/mlp/c_proj", f"{path}/mlp/wo", ff, d)]
    return [*out, *norm("model/ln_f", "final_norm")]


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
    path = folder / NATIVE_CONFIG
    if not path.is_file():
        raise UserError(f"{folder}: {NATIVE_CONFIG} is missing; a GPT-2 checkpoint needs it beside (or give our "
                        "t5pegasus_config.json)")
    hp = read_json(path)
    try:
        d, heads, vocab = hp["n_embd"], hp["n_head"], hp["n_vocab"]
        return GPTConfig(vocab_size=vocab, hidden_size=d, num_layers=hp["n_layer"], num_heads=heads,
                         head_dim=d // heads, intermediate_size=4 * d, max_position_embeddings=hp["n_ctx"],
                         hidden_act="gelu", layer_norm_epsilon=1e-5, pad_token_id=0, bos_token_id=vocab - 1,
                         eos_token_id=vocab - 1)
    except KeyError as e:
        raise UserError(f"{path}: field {e.args[0]!r} is missing (OpenAI hparams.json has n_vocab, n_ctx, n_embd, "
                        "n_head, n_layer)") from None


FORMAT = TFFormat("GPT-2 (OpenAI)", ROOT, lambda cfg, t5_norm=None: entries(cfg), check_exportable, native_config,
                  config_from_native)
