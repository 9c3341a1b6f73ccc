"""GPT-2 (`GPT2LMHeadModel` / `GPT2Model`) <-> HF transformers names, shapes and config.

HF GPT-2 uses Conv1D layers whose weights are already [in, out]; the fused `c_attn` holds [q | k | v]
along its output columns. Tensors carry a `transformer.` prefix in `GPT2LMHeadModel` and none in `GPT2Model`.
The LM head is tied to `wte` (a separate `lm_head.weight` must equal it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5pegasus.convert.checkpoint_files import TensorSource
from t5pegasus.convert.formats import HFFormat
from t5pegasus.errors import UserError
from t5pegasus.families import GPTConfig

_ACT = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "gelu": "gelu-erf",
        "relu": "relu", "silu": "silu", "swish": "silu"}
_ACT_TO_HF = {"gelu": "gelu_new", "gelu-erf": "gelu", "relu": "relu", "silu": "silu"}


def _prefix(tensors: TensorSource) -> str:
    return "transformer." if tensors.has("transformer.wte.weight") else ""


def config_from_hf(hf: dict[str, Any], tensors: TensorSource) -> GPTConfig:
    """Our GPTConfig from a HF GPT-2 config.json dict."""
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACT:
        raise UserError(f"GPT-2 activation_function {act!r} is not supported; known: {', '.join(sorted(_ACT))}")
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
        hidden_act=_ACT[act], layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        dropout_rate=hf.get("resid_pdrop", 0.1), initializer_range=hf.get("initializer_range", 0.02),
        pad_token_id=hf.get("pad_token_id") or 0, bos_token_id=50256 if bos is None else bos,
        eos_token_id=50256 if eos is None else eos,
    )


def _norm(tensors: TensorSource, prefix: str, d: int) -> dict[str, np.ndarray]:
    return {"scale": tensors.take(f"{prefix}.weight", (d,)), "bias": tensors.take(f"{prefix}.bias", (d,))}


def params_from_hf(cfg: GPTConfig, tensors: TensorSource) -> dict[str, Any]:
    """Our (unscanned) parameter tree from HF GPT-2 tensors."""
    d, h, hd, ff, v = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size
    p = _prefix(tensors)
    wte = tensors.take(f"{p}wte.weight", (v, d))
    params: dict[str, Any] = {
        "token_embeddings": {"embedding": wte},
        "position_embeddings": {"embedding": tensors.take(f"{p}wpe.weight", (cfg.max_position_embeddings, d))},
        "final_norm": _norm(tensors, f"{p}ln_f", d),
    }
    for i in range(cfg.num_layers):
        lp = f"{p}h.{i}"
        w = tensors.take(f"{lp}.attn.c_attn.weight", (d, 3 * h * hd))
        b = tensors.take(f"{lp}.attn.c_attn.bias", (3 * h * hd,))
        attention = {name: {"kernel": w[:, j * h * hd:(j + 1) * h * hd].reshape(d, h, hd),
                            "bias": b[j * h * hd:(j + 1) * h * hd].reshape(h, hd)}
                     for j, name in enumerate(("query", "key", "value"))}
        attention["out"] = {"kernel": tensors.take(f"{lp}.attn.c_proj.weight", (h * hd, d)).reshape(h, hd, d),
                            "bias": tensors.take(f"{lp}.attn.c_proj.bias", (d,))}
        params[f"layers_{i}"] = {
            "attention_norm": _norm(tensors, f"{lp}.ln_1", d),
            "attention": attention,
            "mlp_norm": _norm(tensors, f"{lp}.ln_2", d),
            "mlp": {"wi": {"kernel": tensors.take(f"{lp}.mlp.c_fc.weight", (d, ff)),
                           "bias": tensors.take(f"{lp}.mlp.c_fc.bias", (ff,))},
                    "wo": {"kernel": tensors.take(f"{lp}.mlp.c_proj.weight", (ff, d)),
                           "bias": tensors.take(f"{lp}.mlp.c_proj.bias", (d,))}},
        }
    if tensors.has("lm_head.weight"):
        if not np.array_equal(tensors.tensors["lm_head.weight"], wte):
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
    d = cfg.hidden_size
    a = lambda x: np.asarray(x, np.float32)  # noqa: E731
    out = {"transformer.wte.weight": a(params["token_embeddings"]["embedding"]),
           "transformer.wpe.weight": a(params["position_embeddings"]["embedding"]),
           "transformer.ln_f.weight": a(params["final_norm"]["scale"]),
           "transformer.ln_f.bias": a(params["final_norm"]["bias"])}
    for i in range(cfg.num_layers):
        layer, lp = params[f"layers_{i}"], f"transformer.h.{i}"
        att = layer["attention"]
        out[f"{lp}.attn.c_attn.weight"] = np.concatenate(
            [a(att[n]["kernel"]).reshape(d, -1) for n in ("query", "key", "value")], axis=1)
        out[f"{lp}.attn.c_attn.bias"] = np.concatenate([a(att[n]["bias"]).reshape(-1)
                                                        for n in ("query", "key", "value")])
        out[f"{lp}.attn.c_proj.weight"] = a(att["out"]["kernel"]).reshape(-1, d)
        out[f"{lp}.attn.c_proj.bias"] = a(att["out"]["bias"])
        for ours, theirs in (("attention_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[f"{lp}.{theirs}.weight"], out[f"{lp}.{theirs}.bias"] = a(layer[ours]["scale"]), a(layer[ours]["bias"])
        for ours, theirs in (("wi", "c_fc"), ("wo", "c_proj")):
            out[f"{lp}.mlp.{theirs}.weight"] = a(layer["mlp"][ours]["kernel"])
            out[f"{lp}.mlp.{theirs}.bias"] = a(layer["mlp"][ours]["bias"])
    return out


FORMAT = HFFormat(config_from_hf, params_from_hf, config_to_hf, params_to_hf)
