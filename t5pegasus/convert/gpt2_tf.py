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

from t5pegasus.convert import gpt2_names
from t5pegasus.convert.checkpoint_files import TensorSource, config_fields, read_native_config
from t5pegasus.convert.formats import TFFormat
from t5pegasus.convert.name_map import Entry
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


FORMAT = TFFormat("GPT-2 (OpenAI)", ROOT, lambda cfg, t5_norm=None: entries(cfg), check_exportable, native_config,
                  config_from_native)
