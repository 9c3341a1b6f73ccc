"""GPT-2 (`GPT2LMHeadModel` / `GPT2Model`) <-> HF transformers names, shapes and config.

HF GPT-2 uses Conv1D layers whose weights are already [in, out]; the fused `c_attn` holds [q | k | v]
along its output columns. Tensors carry a `transformer.` prefix in `GPT2LMHeadModel` and none in `GPT2Model`.
The LM head is tied to `wte` (a separate `lm_head.weight` must equal it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5pegasus.convert import gpt2_names
from t5pegasus.convert.checkpoint_files import TensorSource
from t5pegasus.convert.formats import HFFormat
from t5pegasus.convert.name_map import from_foreign, lookup, to_foreign
from t5pegasus.errors import UserError
from t5pegasus.families import GPTConfig

_ACT = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "gelu": "gelu-erf",
        "relu": "relu", "silu": "silu", "swish": "silu"}
_ACT_TO_HF = {"gelu": "gelu_new", "gelu-erf": "gelu", "relu": "relu", "silu": "silu"}
PREFIX = "transformer."  # GPT2LMHeadModel's; GPT2Model has none


def config_from_hf(hf: dict[str, Any], tensors: TensorSource) -> GPTConfig:
    """Our GPTConfig from a HF GPT-2 config.json dict."""
    act = lookup(_ACT, hf.get("activation_function", "gelu_new"), "GPT-2 activation_function")
    for flag, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                       ("reorder_and_upcast_attn", False), ("add_cross_attention", False)):
        if bool(hf.get(flag, want)) != want:
            raise UserError(f"GPT-2 config {flag}={hf[flag]} is not supported")
    d, heads = hf["n_embd"], hf["n_head"]
    eos = hf.get("eos_token_id", 50256)
    bos = hf.get("bos_token_id", 50256)
    return GPTConfig(
        vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf["n_layer"], num_heads=heads, head_dim=d // heads,
        intermediate_size=hf.get("n_inner") or 4 * d, max_position_embeddings=hf.get("n_positions", 1024),
        hidden_act=act, layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        dropout_rate=hf.get("resid_pdrop", 0.1), initializer_range=hf.get("initializer_range", 0.02),
        pad_token_id=hf.get("pad_token_id") or 0, bos_token_id=50256 if bos is None else bos,
        eos_token_id=50256 if eos is None else eos,
    )


def params_from_hf(cfg: GPTConfig, tensors: TensorSource) -> dict[str, Any]:
    """Our (unscanned) parameter tree from HF GPT-2 tensors."""
    params = from_foreign(gpt2_names.entries(cfg, "hf", tensors.prefix(PREFIX, "wte.weight")), tensors)
    if tensors.has("lm_head.weight"):
        if not np.array_equal(tensors.tensors["lm_head.weight"], params["token_embeddings"]["embedding"]):
            raise UserError(f"{tensors.where}: lm_head.weight differs from wte; an untied GPT-2 head is not supported")
        tensors.used.add("lm_head.weight")
    return params


def config_to_hf(cfg: GPTConfig) -> dict[str, Any]:
    """A HF GPT-2 config.json dict (GPT2LMHeadModel) for `cfg`."""
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
        raise UserError("HF GPT-2 needs head_dim * num_heads == hidden_size")
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
        "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
        "n_inner": cfg.intermediate_size, "n_positions": cfg.max_position_embeddings,
        "activation_function": _ACT_TO_HF[cfg.hidden_act], "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "resid_pdrop": cfg.dropout_rate, "embd_pdrop": cfg.dropout_rate, "attn_pdrop": cfg.dropout_rate,
        "initializer_range": cfg.initializer_range, "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id, "tie_word_embeddings": True,
        "scale_attn_weights": True,
    }


def params_to_hf(cfg: GPTConfig, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """HF GPT2LMHeadModel tensors (Conv1D layout, float32 numpy) from our unscanned params; the tied
    `lm_head.weight` is not written (transformers ties it on load)."""
    return to_foreign(gpt2_names.entries(cfg, "hf", PREFIX), params, "GPT params")


FORMAT = HFFormat(config_from_hf, params_from_hf, config_to_hf, params_to_hf)
