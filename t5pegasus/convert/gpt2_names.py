"""The GPT-2 tensors as each checkpoint format names and stores them: OpenAI TF, HF transformers, Megatron-LM.

All three hold the same tensors: the token and position tables; per layer ln_1, the fused [q | k | v]
projection (with bias), the attention output projection, ln_2 and the two MLP matrices; the final norm. They
differ in names and in how a kernel is stored: a 1x1 convolution [1, in, out] (OpenAI), a Conv1D [in, out]
(HF) or a torch Linear [out, in] (Megatron); the fused projection concatenates q, k, v along the output axis
in all three. `entries(cfg, fmt)` is the name map both import and export walk, for every format.
"""

from __future__ import annotations

from t5pegasus.convert.name_map import KERNEL_LAYOUTS, Entry, fused, kernel, reshaped, same
from t5pegasus.families import GPTConfig

FORMATS = ("openai", "hf", "megatron")
# how each format stores kernels, and ends the names of kernels, biases and norm scales
_LAYOUT = {"openai": ("conv", "/w", "/b", "/g"), "hf": ("in_out", ".weight", ".bias", ".weight"),
           "megatron": ("out_in", ".weight", ".bias", ".weight")}
# our tensor -> its name in each format of FORMATS (HF's without the `transformer.` prefix); {i} is the layer
_NAMES = {
    "token": ("model/wte", "wte.weight", "word_embeddings.weight"),
    "position": ("model/wpe", "wpe.weight", "position_embeddings.weight"),
    "attention_norm": ("model/h{i}/ln_1", "h.{i}.ln_1", "transformer.layers.{i}.input_layernorm"),
    "qkv": ("model/h{i}/attn/c_attn", "h.{i}.attn.c_attn", "transformer.layers.{i}.attention.query_key_value"),
    "out": ("model/h{i}/attn/c_proj", "h.{i}.attn.c_proj", "transformer.layers.{i}.attention.dense"),
    "mlp_norm": ("model/h{i}/ln_2", "h.{i}.ln_2", "transformer.layers.{i}.post_attention_layernorm"),
    "wi": ("model/h{i}/mlp/c_fc", "h.{i}.mlp.c_fc", "transformer.layers.{i}.mlp.dense_h_to_4h"),
    "wo": ("model/h{i}/mlp/c_proj", "h.{i}.mlp.c_proj", "transformer.layers.{i}.mlp.dense_4h_to_h"),
    "final_norm": ("model/ln_f", "ln_f", "transformer.final_layernorm"),
}


def entries(cfg: GPTConfig, fmt: str, prefix: str = "") -> list[Entry]:
    """The name map of a GPT model in format `fmt` (one of FORMATS), every name after `prefix`, in checkpoint
    order: tables, then each layer, then the final norm."""
    d, h, hd, ff = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
    layout, w, b, g = _LAYOUT[fmt]
    column = FORMATS.index(fmt)

    def name(tensor: str, i: int = 0) -> str:
        return prefix + _NAMES[tensor][column].format(i=i)

    def norm(tensor: str, path: str, i: int = 0) -> list[Entry]:
        return [same(name(tensor, i) + g, f"{path}/scale", (d,)), same(name(tensor, i) + b, f"{path}/bias", (d,))]

    def dense(tensor: str, path: str, i: int, our_shape: tuple[int, ...], in_axes: int = 1) -> list[Entry]:
        return [kernel(name(tensor, i) + w, f"{path}/kernel", our_shape, in_axes, layout),
                same(name(tensor, i) + b, f"{path}/bias", (our_shape[-1],))]

    out = [same(name("token"), "token_embeddings/embedding", (cfg.vocab_size, d)),
           same(name("position"), "position_embeddings/embedding", (cfg.max_position_embeddings, d))]
    for i in range(cfg.num_layers):
        path = f"layers_{i}"
        qkv = [f"{path}/attention/{n}" for n in ("query", "key", "value")]
        out += [*norm("attention_norm", f"{path}/attention_norm", i),
                fused(name("qkv", i) + w, KERNEL_LAYOUTS[layout],
                      [kernel("", f"{p}/kernel", (d, h, hd), 1, layout) for p in qkv]),
                fused(name("qkv", i) + b, 0, [reshaped("", (h * hd,), f"{p}/bias", (h, hd)) for p in qkv]),
                *dense("out", f"{path}/attention/out", i, (h, hd, d), 2),
                *norm("mlp_norm", f"{path}/mlp_norm", i),
                *dense("wi", f"{path}/mlp/wi", i, (d, ff)),
                *dense("wo", f"{path}/mlp/wo", i, (ff, d))]
    return [*out, *norm("final_norm", "final_norm")]
