"""BERT (`BertModel`, `BertForMaskedLM`, `BertForPreTraining`) <-> HF transformers names, shapes and config.

HF Linear weights are [out, in]; ours are [in, heads, kv] / [heads, kv, out] / [in, out]. Tensors may carry
a `bert.` prefix (task models) or none (`BertModel`). Old checkpoints name LayerNorm parameters gamma/beta.
The MLM decoder is tied to the word embeddings (our head is always tied); the next-sentence head of
`BertForPreTraining` is dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5pegasus.convert.checkpoint_files import TensorSource
from t5pegasus.convert.formats import HFFormat
from t5pegasus.convert.name_map import lookup
from t5pegasus.errors import UserError
from t5pegasus.families import BertConfig

_ACT = {"gelu": "gelu-erf", "gelu_python": "gelu-erf", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu",
        "gelu_fast": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}
_ACT_TO_HF = {"gelu-erf": "gelu", "gelu": "gelu_new", "relu": "relu", "silu": "silu"}


def _prefix(tensors: TensorSource) -> str:
    return tensors.prefix("bert.", "embeddings.word_embeddings.weight")


def config_from_hf(hf: dict[str, Any], tensors: TensorSource) -> BertConfig:
    """Our BertConfig from a HF BERT config.json dict; pooler / MLM head presence is read from the tensors."""
    act = lookup(_ACT, hf.get("hidden_act", "gelu"), "BERT hidden_act")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"BERT position_embedding_type {hf['position_embedding_type']!r} is not supported")
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    p = _prefix(tensors)
    return BertConfig(
        vocab_size=hf["vocab_size"], hidden_size=hidden, num_layers=hf["num_hidden_layers"], num_heads=heads,
        head_dim=hidden // heads, intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
        hidden_act=act, layer_norm_epsilon=hf.get("layer_norm_eps", 1e-12),
        dropout_rate=hf.get("hidden_dropout_prob", 0.1), initializer_range=hf.get("initializer_range", 0.02),
        with_pooler=tensors.has(f"{p}pooler.dense.weight"),
        with_mlm=tensors.has("cls.predictions.transform.dense.weight"),
        pad_token_id=hf.get("pad_token_id") or 0,
    )


def _norm(tensors: TensorSource, prefix: str, d: int) -> dict[str, np.ndarray]:
    if tensors.has(f"{prefix}.gamma"):
        return {"scale": tensors.take(f"{prefix}.gamma", (d,)), "bias": tensors.take(f"{prefix}.beta", (d,))}
    return {"scale": tensors.take(f"{prefix}.weight", (d,)), "bias": tensors.take(f"{prefix}.bias", (d,))}


def _dense(tensors: TensorSource, prefix: str, n_in: int, n_out: int) -> dict[str, np.ndarray]:
    return {"kernel": tensors.take(f"{prefix}.weight", (n_out, n_in)).T,
            "bias": tensors.take(f"{prefix}.bias", (n_out,))}


def params_from_hf(cfg: BertConfig, tensors: TensorSource) -> dict[str, Any]:
    """Our (unscanned) parameter tree from HF BERT tensors."""
    d, h, hd, ff, v = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size
    p = _prefix(tensors)

    def qkv(name: str) -> dict[str, np.ndarray]:
        return {"kernel": tensors.take(f"{name}.weight", (h * hd, d)).T.reshape(d, h, hd),
                "bias": tensors.take(f"{name}.bias", (h * hd,)).reshape(h, hd)}

    word = tensors.take(f"{p}embeddings.word_embeddings.weight", (v, d))
    params: dict[str, Any] = {
        "word_embeddings": {"embedding": word},
        "position_embeddings": {"embedding": tensors.take(f"{p}embeddings.position_embeddings.weight",
                                                          (cfg.max_position_embeddings, d))},
        "segment_embeddings": {"embedding": tensors.take(f"{p}embeddings.token_type_embeddings.weight",
                                                         (cfg.type_vocab_size, d))},
        "embeddings_norm": _norm(tensors, f"{p}embeddings.LayerNorm", d),
    }
    for i in range(cfg.num_layers):
        lp = f"{p}encoder.layer.{i}"
        out = tensors.take(f"{lp}.attention.output.dense.weight", (d, h * hd)).T.reshape(h, hd, d)
        params[f"layers_{i}"] = {
            "attention": {"query": qkv(f"{lp}.attention.self.query"), "key": qkv(f"{lp}.attention.self.key"),
                          "value": qkv(f"{lp}.attention.self.value"),
                          "out": {"kernel": out, "bias": tensors.take(f"{lp}.attention.output.dense.bias", (d,))}},
            "attention_norm": _norm(tensors, f"{lp}.attention.output.LayerNorm", d),
            "mlp": {"wi": _dense(tensors, f"{lp}.intermediate.dense", d, ff),
                    "wo": _dense(tensors, f"{lp}.output.dense", ff, d)},
            "mlp_norm": _norm(tensors, f"{lp}.output.LayerNorm", d),
        }
    if cfg.with_pooler:
        params["pooler"] = _dense(tensors, f"{p}pooler.dense", d, d)
    if cfg.with_mlm:
        params["mlm_transform"] = _dense(tensors, "cls.predictions.transform.dense", d, d)
        params["mlm_norm"] = _norm(tensors, "cls.predictions.transform.LayerNorm", d)
        params["mlm_bias"] = tensors.take("cls.predictions.bias", (v,))
        _check_tied(tensors, "cls.predictions.decoder.weight", word)
        _check_tied(tensors, "cls.predictions.decoder.bias", params["mlm_bias"])
    for name in ("cls.seq_relationship.weight", "cls.seq_relationship.bias"):  # next-sentence head: dropped
        if tensors.has(name):
            tensors.used.add(name)
    return params


def _check_tied(tensors: TensorSource, name: str, value: np.ndarray) -> None:
    if not tensors.has(name):
        return
    if not np.array_equal(tensors.tensors[name], value):
        raise UserError(f"{tensors.where}: {name} differs from the tensor it should be tied to; "
                        "an untied BERT MLM head is not supported")
    tensors.used.add(name)


def config_to_hf(cfg: BertConfig) -> dict[str, Any]:
    """A HF BERT config.json dict for `cfg` (architecture BertForMaskedLM with an MLM head, else BertModel).

    The attention mode (UniLM / causal) and a linear pooler are how the weights are used, not weights: HF
    config has no field for them, so they are not written.
    """
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
        raise UserError("HF BERT needs head_dim * num_heads == hidden_size")
    if cfg.conditional_layer_norm:
        raise UserError("HF BERT has no conditional LayerNorm; its condition projections cannot be saved")
    # With both pooler and MLM head (UniLM, bert4keras checkpoints) the model fits HF's BertForPreTraining, whose
    # next-sentence head we do not have: `params_to_hf` writes it as zeros (a 50/50 prediction).
    architecture = ("BertForPreTraining" if cfg.with_pooler and cfg.with_mlm else
                    "BertForMaskedLM" if cfg.with_mlm else "BertModel")
    return {
        "model_type": "bert", "architectures": [architecture],
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.intermediate_size,
        "hidden_act": _ACT_TO_HF[cfg.hidden_act], "hidden_dropout_prob": cfg.dropout_rate,
        "attention_probs_dropout_prob": cfg.dropout_rate, "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size, "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_epsilon, "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute", "tie_word_embeddings": True,
    }


def params_to_hf(cfg: BertConfig, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """HF BERT tensors (torch layout, float32 numpy) from our unscanned params; `bert.` prefix with an MLM head.

    The tied MLM decoder weight is not written (transformers ties it on load), as `save_pretrained` does.
    """
    d = cfg.hidden_size
    p = "bert." if cfg.with_mlm else ""
    a = lambda x: np.asarray(x, np.float32)  # noqa: E731
    out: dict[str, np.ndarray] = {}

    def dense(name: str, tree: dict[str, Any]) -> None:
        out[f"{name}.weight"] = a(tree["kernel"]).reshape(-1, a(tree["kernel"]).shape[-1]).T.copy()
        out[f"{name}.bias"] = a(tree["bias"]).reshape(-1)

    def norm(name: str, tree: dict[str, Any]) -> None:
        out[f"{name}.weight"], out[f"{name}.bias"] = a(tree["scale"]), a(tree["bias"])

    out[f"{p}embeddings.word_embeddings.weight"] = a(params["word_embeddings"]["embedding"])
    out[f"{p}embeddings.position_embeddings.weight"] = a(params["position_embeddings"]["embedding"])
    out[f"{p}embeddings.token_type_embeddings.weight"] = a(params["segment_embeddings"]["embedding"])
    norm(f"{p}embeddings.LayerNorm", params["embeddings_norm"])
    for i in range(cfg.num_layers):
        layer, lp = params[f"layers_{i}"], f"{p}encoder.layer.{i}"
        for n in ("query", "key", "value"):
            q = layer["attention"][n]
            out[f"{lp}.attention.self.{n}.weight"] = a(q["kernel"]).reshape(d, -1).T.copy()
            out[f"{lp}.attention.self.{n}.bias"] = a(q["bias"]).reshape(-1)
        o = layer["attention"]["out"]
        out[f"{lp}.attention.output.dense.weight"] = a(o["kernel"]).reshape(-1, d).T.copy()
        out[f"{lp}.attention.output.dense.bias"] = a(o["bias"])
        norm(f"{lp}.attention.output.LayerNorm", layer["attention_norm"])
        dense(f"{lp}.intermediate.dense", layer["mlp"]["wi"])
        dense(f"{lp}.output.dense", layer["mlp"]["wo"])
        norm(f"{lp}.output.LayerNorm", layer["mlp_norm"])
    if cfg.with_pooler:
        dense(f"{p}pooler.dense", params["pooler"])
    if cfg.with_mlm:
        dense("cls.predictions.transform.dense", params["mlm_transform"])
        norm("cls.predictions.transform.LayerNorm", params["mlm_norm"])
        out["cls.predictions.bias"] = a(params["mlm_bias"])
    if cfg.with_pooler and cfg.with_mlm:  # BertForPreTraining's next-sentence head (see config_to_hf)
        out["cls.seq_relationship.weight"] = np.zeros((2, d), np.float32)
        out["cls.seq_relationship.bias"] = np.zeros((2,), np.float32)
    return out


FORMAT = HFFormat(config_from_hf, params_from_hf, config_to_hf, params_to_hf)
