"""T5 / mT5 / T5 PEGASUS <-> HF transformers names, shapes and config fields.

HF stores torch Linear weights as [out, in]; ours are [in, heads, kv] / [heads, kv, out] / [in, out].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5pegasus.convert.checkpoint_files import TensorSource
from t5pegasus.convert.formats import HFFormat, RemoteCode
from t5pegasus.errors import UserError
from t5pegasus.families import T5Config

# HF dense_act_fn -> our feed-forward kind (gated forms); "gated-gelu" in HF means the tanh approximation.
_GATED_ACT = {"gelu_new": "gated-gelu", "gelu_pytorch_tanh": "gated-gelu", "gelu_fast": "gated-gelu",
              "gelu": "gated-gelu-erf", "gelu_python": "gated-gelu-erf", "silu": "gated-silu",
              "swish": "gated-silu", "relu": "gated-relu"}


def config_from_hf(hf: dict[str, Any], tensors: TensorSource) -> T5Config:
    """Our T5Config from a HF T5/MT5 config.json dict and the checkpoint's tensors.

    Whether the head is tied is read from the tensors (transformers 5 always writes tie_word_embeddings=True):
    a separate `lm_head.weight` that differs from `shared.weight` means untied.
    """
    proj = hf.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    gated = parts[0] == "gated"
    act = parts[-1]
    if proj == "gated-gelu":
        act = "gelu_new"
    if gated:
        if act not in _GATED_ACT:
            raise UserError(f"feed_forward_proj {proj!r} is not supported")
        feed_forward = _GATED_ACT[act]
    elif act == "relu":
        feed_forward = "relu"
    else:
        raise UserError(f"feed_forward_proj {proj!r} is not supported (relu or gated-*)")
    model_type = hf.get("model_type", "t5")
    tied = not (tensors.has("lm_head.weight") and tensors.has("shared.weight")
                and not np.array_equal(tensors.tensors["lm_head.weight"], tensors.tensors["shared.weight"]))
    # HF T5 scales the decoder output when the saved config ties embeddings (4.x) or says
    # scale_decoder_outputs (5.x); MT5 never scales.
    if model_type == "t5":
        scale = bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True)))
    else:
        scale = False
    num_layers = hf.get("num_layers", 6)
    return T5Config(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_ff=hf["d_ff"], num_heads=hf["num_heads"],
        d_kv=hf["d_kv"], num_encoder_layers=num_layers,
        num_decoder_layers=hf.get("num_decoder_layers") or num_layers,
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        dropout_rate=hf.get("dropout_rate", 0.1), layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
        feed_forward=feed_forward, tie_word_embeddings=tied, scale_logits=scale,
        pad_token_id=hf.get("pad_token_id", 0) if hf.get("pad_token_id") is not None else 0,
        eos_token_id=_first(hf.get("eos_token_id", 1)),
        decoder_start_token_id=hf.get("decoder_start_token_id", 0) or 0,
        initializer_factor=hf.get("initializer_factor", 1.0),
    )


# Each stack's block: HF's `layer.{j}` in order, (our sublayer, HF module); our norm before it is `<ours>_norm`.
_SUBLAYERS = {"encoder": (("attention", "SelfAttention"), ("mlp", "DenseReluDense")),
              "decoder": (("self_attention", "SelfAttention"), ("cross_attention", "EncDecAttention"),
                          ("mlp", "DenseReluDense"))}


def _stacks(cfg: T5Config) -> tuple[tuple[str, int], ...]:
    return ("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)


def _first(value: Any) -> int:
    return int(value[0]) if isinstance(value, list) else int(value if value is not None else 1)


def params_from_hf(cfg: T5Config, tensors: TensorSource) -> dict[str, Any]:
    """Our (unscanned) parameter tree from HF T5/MT5 tensors."""
    d, h, kv, ff = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff

    def attn(prefix: str) -> dict[str, Any]:
        def qkv(n: str) -> dict[str, np.ndarray]:
            return {"kernel": tensors.take(f"{prefix}.{n}.weight", (h * kv, d)).T.reshape(d, h, kv)}

        return {"query": qkv("q"), "key": qkv("k"), "value": qkv("v"),
                "out": {"kernel": tensors.take(f"{prefix}.o.weight", (d, h * kv)).T.reshape(h, kv, d)}}

    def norm(name: str) -> dict[str, np.ndarray]:
        return {"scale": tensors.take(name, (d,))}

    def mlp(prefix: str) -> dict[str, Any]:
        names = ("wi_0", "wi_1") if cfg.gated else ("wi",)
        out = {n: {"kernel": tensors.take(f"{prefix}.{n}.weight", (ff, d)).T} for n in names}
        out["wo"] = {"kernel": tensors.take(f"{prefix}.wo.weight", (d, ff)).T}
        return out

    def relpos(stack: str) -> dict[str, np.ndarray]:
        name = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        return {"rel_embedding": tensors.take(name, (cfg.relative_buckets, h))}

    stacks: dict[str, dict[str, Any]] = {}
    for stack, count in _stacks(cfg):
        tree = stacks[stack] = {"relpos_bias": relpos(stack), "final_norm": norm(f"{stack}.final_layer_norm.weight")}
        for i in range(count):
            layer = tree[f"layers_{i}"] = {}
            for j, (ours, theirs) in enumerate(_SUBLAYERS[stack]):
                layer[f"{ours}_norm"] = norm(f"{stack}.block.{i}.layer.{j}.layer_norm.weight")
                layer[ours] = (mlp if ours == "mlp" else attn)(f"{stack}.block.{i}.layer.{j}.{theirs}")
    encoder, decoder = stacks["encoder"], stacks["decoder"]
    shared = tensors.take("shared.weight", (cfg.vocab_size, d))
    if not cfg.tie_word_embeddings:
        head = tensors.take("lm_head.weight", (cfg.vocab_size, d)) if tensors.has("lm_head.weight") else shared
        decoder["lm_head"] = {"kernel": head.T}
    for tied in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
        if tensors.has(tied) and tied not in tensors.used:
            tensors.used.add(tied)
    return {"shared": {"embedding": shared}, "encoder": encoder, "decoder": decoder}


# Our feed-forward kind -> HF feed_forward_proj. "gated-gelu" in HF is the tanh form; "gelu_python" is erf.
_TO_HF_PROJ = {"relu": "relu", "gated-relu": "gated-relu", "gated-gelu": "gated-gelu",
               "gated-gelu-erf": "gated-gelu_python", "gated-silu": "gated-silu"}


def hf_model_type(cfg: T5Config) -> str:
    """"t5" when HF's T5 reproduces the head exactly (tied and scaled), otherwise "mt5" (untied, unscaled:
    a logit scale is folded into the exported head). The T5 PEGASUS cross-attention bias is always "mt5",
    the classes its remote code extends."""
    return "t5" if cfg.tie_word_embeddings and cfg.logits_scaled and not _has_cross_bias(cfg) else "mt5"


def _has_cross_bias(cfg: T5Config) -> bool:
    """Whether the model adds the T5 PEGASUS cross-attention bias (it needs relative-bias positions)."""
    return cfg.cross_attention_bias and cfg.relative_bias


def config_to_hf(cfg: T5Config) -> dict[str, Any]:
    """A HF T5/MT5 config.json dict for `cfg` (the cross-attention bias is `remote_code`'s: see save_hf)."""
    model_type = hf_model_type(cfg)
    out = {
        "model_type": model_type,
        "architectures": ["T5ForConditionalGeneration" if model_type == "t5" else "MT5ForConditionalGeneration"],
        "vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff,
        "num_layers": cfg.num_encoder_layers, "num_decoder_layers": cfg.num_decoder_layers,
        "num_heads": cfg.num_heads, "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance, "dropout_rate": cfg.dropout_rate,
        "layer_norm_epsilon": cfg.layer_norm_epsilon, "initializer_factor": cfg.initializer_factor,
        "feed_forward_proj": _TO_HF_PROJ[cfg.feed_forward], "is_encoder_decoder": True,
        "tie_word_embeddings": model_type == "t5", "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id, "decoder_start_token_id": cfg.decoder_start_token_id,
        "torch_dtype": "float32",
    }
    if model_type == "t5":
        out["scale_decoder_outputs"] = True
    return out


def params_to_hf(cfg: T5Config, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """HF T5/MT5 tensors ([out, in] torch layout) from our unscanned, unboxed params."""
    d, h, kv = cfg.d_model, cfg.num_heads, cfg.d_kv
    out: dict[str, np.ndarray] = {}

    def arr(x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)

    def attn(prefix: str, p: dict[str, Any]) -> None:
        for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v")):
            out[f"{prefix}.{theirs}.weight"] = arr(p[ours]["kernel"]).reshape(d, h * kv).T
        out[f"{prefix}.o.weight"] = arr(p["out"]["kernel"]).reshape(h * kv, d).T

    def mlp(prefix: str, p: dict[str, Any]) -> None:
        for name, sub in p.items():
            out[f"{prefix}.{name}.weight"] = arr(sub["kernel"]).T

    for stack, count in _stacks(cfg):
        tree = params[stack]
        # a model without the relative bias (RoPE, no positions; a lossy export) gets a zero one: HF's T5
        # always adds it, and zeros add nothing
        out[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
            arr(tree["relpos_bias"]["rel_embedding"]) if cfg.relative_bias
            else np.zeros((cfg.relative_buckets, h), np.float32))
        for i in range(count):
            layer = tree[f"layers_{i}"]
            for j, (ours, theirs) in enumerate(_SUBLAYERS[stack]):
                out[f"{stack}.block.{i}.layer.{j}.layer_norm.weight"] = arr(layer[f"{ours}_norm"]["scale"])
                (mlp if ours == "mlp" else attn)(f"{stack}.block.{i}.layer.{j}.{theirs}", layer[ours])
        out[f"{stack}.final_layer_norm.weight"] = arr(tree["final_norm"]["scale"])
    shared = arr(params["shared"]["embedding"])
    out["shared.weight"] = shared
    if hf_model_type(cfg) == "mt5":
        head = shared.T if cfg.tie_word_embeddings else arr(params["decoder"]["lm_head"]["kernel"])
        if cfg.logits_scaled:  # fold the d_model**-0.5 output scale into the (linear, bias-free) head
            head = head * np.float32(cfg.d_model**-0.5)
        out["lm_head.weight"] = np.ascontiguousarray(head.T)
    return out


def lossy(cfg: T5Config) -> str | None:
    """What HF's own T5/MT5 classes cannot express: the T5 PEGASUS cross-attention position bias."""
    if not _has_cross_bias(cfg):
        return None
    return "a relative position bias in cross-attention (T5 PEGASUS), which HF's MT5 does not have"


# The remote code that adds it (t5pegasus/convert/hf_remote/<module>.py) and its model class.
_REMOTE_MODULE, _REMOTE_MODEL = "modeling_t5pegasus", "T5PegasusForConditionalGeneration"


def remote_code(cfg: T5Config) -> RemoteCode | None:
    """HF's MT5 with the cross-attention bias added, for a model that has one (`lossy`)."""
    if lossy(cfg) is None:
        return None
    return RemoteCode(f"{_REMOTE_MODULE}.py", {
        "auto_map": {"AutoModelForSeq2SeqLM": f"{_REMOTE_MODULE}.{_REMOTE_MODEL}"},
        "architectures": [_REMOTE_MODEL], "cross_attention_bias": True})


def loss_effect(cfg: T5Config, params: Any) -> str:
    """The logit difference that dropping the cross-attention bias makes on a probe batch."""
    return f"dropping it changes logits by up to {cross_attention_bias_effect(cfg, params):.4g} on a probe batch"


def probe_batch(cfg: T5Config, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(encoder ids [2, 32], decoder ids [2, 16]): random non-pad ids, the batch `loss_effect` measures on."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, cfg.vocab_size, (2, 32)), rng.integers(1, cfg.vocab_size, (2, 16))


def cross_attention_bias_effect(cfg: T5Config, params: Any, seed: int = 0) -> float:
    """Max |logit difference| on `probe_batch` between the model and the same model without the T5 PEGASUS
    cross-attention bias (what a load of the export as HF's plain MT5 loses)."""
    import jax.numpy as jnp

    from t5pegasus.models import T5

    enc, dec = (jnp.asarray(x, jnp.int32) for x in probe_batch(cfg, seed))
    with_bias = T5(cfg).apply({"params": params}, enc, dec)
    without = T5(cfg.replace(cross_attention_bias=False)).apply({"params": params}, enc, dec)
    return float(jnp.abs(with_bias - without).max())


def exact_tensors(cfg: T5Config, params: Any) -> dict[str, np.ndarray]:
    """The unfolded LM head when the export folds the logit scale into it (the folded one is rounded)."""
    if hf_model_type(cfg) != "mt5" or not cfg.logits_scaled:
        return {}
    head = params["shared"]["embedding"] if cfg.tie_word_embeddings else params["decoder"]["lm_head"]["kernel"]
    return {"lm_head": np.ascontiguousarray(np.asarray(head, np.float32))}


def restore_exact(cfg: T5Config, params: dict[str, Any], exact: dict[str, np.ndarray]) -> dict[str, Any]:
    """`params` as the exported model had them: without the zero relative-bias tables a lossy export of a
    RoPE / position-free model wrote, and with the exact LM head of `exact_tensors` put back (a tied model
    needs none)."""
    if not cfg.relative_bias:
        params = {k: ({n: t for n, t in v.items() if n != "relpos_bias"} if k in ("encoder", "decoder") else v)
                  for k, v in params.items()}
    if "lm_head" not in exact:
        return params
    decoder = {k: v for k, v in params["decoder"].items() if k != "lm_head"}
    if not cfg.tie_word_embeddings:
        decoder["lm_head"] = {"kernel": exact["lm_head"]}
    return {**params, "decoder": decoder}


FORMAT = HFFormat(config_from_hf, params_from_hf, config_to_hf, params_to_hf, lossy=lossy, loss_effect=loss_effect,
                  exact_tensors=exact_tensors, restore_exact=restore_exact, remote_code=remote_code)
