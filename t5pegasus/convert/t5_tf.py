"""T5 / mT5 / T5 PEGASUS <-> mesh-TensorFlow checkpoint names, shapes and config.

Names (as mesh-TF T5, the T5 PEGASUS release and HF transformers 4.x `load_tf_weights_in_t5` spell them):
`shared/embedding` [vocab, d]; `{encoder,decoder}/block_{i:03d}/layer_{j:03d}/...` with layer 0 the
self-attention (`SelfAttention/{q,k,v}` [d, heads*kv], `o` [heads*kv, d]), in the decoder layer 1 the
cross-attention (`EncDecAttention/...`), and the last layer the feed-forward (`DenseReluDense/{wi | wi_0, wi_1,
wo}/kernel`, [in, out]); each layer's pre-norm `<norm>/scale`; the relative position table
`block_000/layer_000/SelfAttention/relative_attention_bias` [heads, buckets] (mesh-TF keeps it transposed);
the final norms; `decoder/logits/kernel` [d, vocab] for an untied head.

Norms have two spellings: `layer_norm/scale` with `final_layer_norm/scale` (T5 1.0), or `rms_norm/scale` with
`{encoder,decoder}/rms_norm/scale` for the final norms (T5 1.1, mT5, bert4keras `mt5.1.1`, which the T5
PEGASUS release was trained with). Export writes either; import accepts both.

Config without our `t5pegasus_config.json`: a bert4keras `config.json` (the T5 PEGASUS release's: hidden_size,
num_attention_heads, attention_head_size, num_hidden_layers, intermediate_size, vocab_size,
relative_attention_num_buckets, hidden_act, hidden_dropout_prob) means a model built by bert4keras, so the
three T5 PEGASUS switches are on: cross-attention adds the decoder's position bias, logits are scaled by
d_model**-0.5, and "gelu" is the erf form (bert4keras' default). With no config file at all, the sizes are read
from the tensors and the model is taken to be Google's mesh-TF T5 (tanh GELU when gated, relu otherwise;
logits scaled only when tied; no cross-attention bias).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from t5pegasus.convert.checkpoint_files import TensorSource, config_fields, read_json
from t5pegasus.convert.formats import TFFormat
from t5pegasus.convert.name_map import Entry, reshaped, same, transposed
from t5pegasus.errors import UserError
from t5pegasus.families import T5Config

ROOT = "shared/embedding"
NORMS = ("rms_norm", "layer_norm")
NATIVE_CONFIG = "config.json"
# bert4keras activation names (its "gelu" is the erf form) <-> our gated feed-forward kinds.
_GATED_FROM_B4K = {"gelu": "gated-gelu-erf", "gelu_erf": "gated-gelu-erf", "gelu_tanh": "gated-gelu",
                   "relu": "gated-relu", "swish": "gated-silu", "silu": "gated-silu"}
_B4K_ACT = {"gated-gelu-erf": "gelu", "gated-gelu": "gelu_tanh", "gated-relu": "relu", "gated-silu": "swish",
            "relu": "relu"}
# T5 PEGASUS special ids (BERT WordPiece vocab.txt), used when no vocab.txt sits beside the checkpoint.
_PEGASUS_IDS = {"pad_token_id": 0, "unk_token_id": 100, "decoder_start_token_id": 101, "eos_token_id": 102}


def default_norm(cfg: T5Config) -> str:
    """The spelling the original checkpoints of this kind use: rms_norm for gated (T5 1.1 / mT5 / T5 PEGASUS)."""
    return "rms_norm" if cfg.gated else "layer_norm"


def entries(cfg: T5Config, norm: str | None = None) -> list[Entry]:
    """The mesh-TF names of a T5 model, in checkpoint order, with `norm` spelling (default: `default_norm`)."""
    norm = norm or default_norm(cfg)
    if norm not in NORMS:
        raise UserError(f"T5 norm spelling {norm!r} is not one of {', '.join(NORMS)}")
    other = NORMS[1 - NORMS.index(norm)]
    d, h, kv, ff, v = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff, cfg.vocab_size
    out = [same(ROOT, "shared/embedding", (v, d))]

    def final(stack: str) -> str:
        return f"{stack}/rms_norm/scale" if norm == "rms_norm" else f"{stack}/final_layer_norm/scale"

    def layer_norm(prefix: str, path: str) -> Entry:
        return same(f"{prefix}/{norm}/scale", f"{path}/scale", (d,), aliases=(f"{prefix}/{other}/scale",))

    def attention(prefix: str, path: str) -> list[Entry]:
        qkv = [reshaped(f"{prefix}/{t}", (d, h * kv), f"{path}/{o}/kernel", (d, h, kv))
               for t, o in (("q", "query"), ("k", "key"), ("v", "value"))]
        return [*qkv, reshaped(f"{prefix}/o", (h * kv, d), f"{path}/out/kernel", (h, kv, d))]

    def mlp(prefix: str, path: str) -> list[Entry]:
        inner = ("wi_0", "wi_1") if cfg.gated else ("wi",)
        return [*(same(f"{prefix}/DenseReluDense/{n}/kernel", f"{path}/{n}/kernel", (d, ff)) for n in inner),
                same(f"{prefix}/DenseReluDense/wo/kernel", f"{path}/wo/kernel", (ff, d))]

    for stack, count in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
        for i in range(count):
            block, ours = f"{stack}/block_{i:03d}", f"{stack}/layers_{i}"
            self_name = "attention" if stack == "encoder" else "self_attention"
            out += attention(f"{block}/layer_000/SelfAttention", f"{ours}/{self_name}")
            if i == 0:
                out.append(transposed(f"{block}/layer_000/SelfAttention/relative_attention_bias",
                                      f"{stack}/relpos_bias/rel_embedding", (cfg.relative_buckets, h)))
            out.append(layer_norm(f"{block}/layer_000", f"{ours}/{self_name}_norm"))
            j = 1
            if stack == "decoder":
                out += attention(f"{block}/layer_001/EncDecAttention", f"{ours}/cross_attention")
                out.append(layer_norm(f"{block}/layer_001", f"{ours}/cross_attention_norm"))
                j = 2
            out += mlp(f"{block}/layer_{j:03d}", f"{ours}/mlp")
            out.append(layer_norm(f"{block}/layer_{j:03d}", f"{ours}/mlp_norm"))
        out.append(same(final(stack), f"{stack}/final_norm/scale", (d,),
                        aliases=(f"{stack}/rms_norm/scale", f"{stack}/final_layer_norm/scale")))
    if not cfg.tie_word_embeddings:
        out.append(same("decoder/logits/kernel", "decoder/lm_head/kernel", (d, v)))
    return out


def check_exportable(cfg: T5Config) -> None:
    """mesh-TF names cover T5 with its relative position bias (the T5 PEGASUS switches are config, not weights)."""
    if not cfg.relative_bias:
        kind = cfg.attention.position
        raise UserError(f"mesh-TF T5 checkpoints have a relative position bias table; attention.position {kind!r} "
                        "has no names there")


def native_config(cfg: T5Config) -> dict[str, dict[str, Any]]:
    """The T5 PEGASUS release's `config.json` (bert4keras fields) when the model is one bert4keras builds
    (T5 PEGASUS switches on, equal encoder/decoder depth); otherwise nothing (mesh-TF keeps its config in gin)."""
    bert4keras_like = (cfg.cross_attention_bias and cfg.logits_scaled
                       and cfg.num_encoder_layers == cfg.num_decoder_layers
                       and cfg.relative_max_distance == 128 and cfg.layer_norm_epsilon == 1e-6)
    if not bert4keras_like:
        return {}
    act = _B4K_ACT[cfg.feed_forward]
    return {NATIVE_CONFIG: {
        "hidden_act": [act, "linear"] if cfg.gated else act, "hidden_dropout_prob": cfg.dropout_rate,
        "hidden_size": cfg.d_model, "initializer_range": 0.02, "intermediate_size": cfg.d_ff,
        "num_attention_heads": cfg.num_heads, "attention_head_size": cfg.d_kv,
        "num_hidden_layers": cfg.num_encoder_layers, "vocab_size": cfg.vocab_size,
        "relative_attention_num_buckets": cfg.relative_buckets, "attention_scale": False, "is_dropout": True,
    }}


def _vocab_ids(folder: Path) -> dict[str, int]:
    """Special ids of a WordPiece vocab.txt beside the checkpoint, else the T5 PEGASUS ones."""
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        return dict(_PEGASUS_IDS)
    index = {tok: i for i, tok in enumerate(vocab.read_text(encoding="utf-8").splitlines())}
    wanted = {"pad_token_id": "[PAD]", "unk_token_id": "[UNK]", "decoder_start_token_id": "[CLS]",
              "eos_token_id": "[SEP]"}
    return {k: index.get(tok, _PEGASUS_IDS[k]) for k, tok in wanted.items()}


def _layers(tensors: TensorSource, stack: str) -> int:
    found = {int(m.group(1)) for n in tensors.tensors if (m := re.match(rf"{stack}/block_(\d+)/", n))}
    return max(found) + 1 if found else 0


def _inferred(tensors: TensorSource) -> dict[str, Any]:
    """Sizes read from the tensors (mesh-TF: the relative table is [heads, buckets])."""
    vocab, d = tensors.tensors[ROOT].shape
    table = "encoder/block_000/layer_000/SelfAttention/relative_attention_bias"
    if not tensors.has(table):
        table = "decoder/block_000/layer_000/SelfAttention/relative_attention_bias"
    if not tensors.has(table):
        raise UserError(f"{tensors.where}: tensor {table!r} is missing (expected shape (heads, buckets))")
    heads, buckets = tensors.tensors[table].shape
    q = tensors.tensors.get("decoder/block_000/layer_000/SelfAttention/q")
    gated = tensors.has("decoder/block_000/layer_002/DenseReluDense/wi_0/kernel")
    wi = tensors.tensors.get(f"decoder/block_000/layer_002/DenseReluDense/{'wi_0' if gated else 'wi'}/kernel")
    if q is None or wi is None:
        raise UserError(f"{tensors.where}: decoder block 0 is incomplete (no SelfAttention/q or DenseReluDense "
                        "wi kernel); is this a T5 checkpoint?")
    return dict(vocab_size=vocab, d_model=d, num_heads=heads, d_kv=q.shape[1] // heads, d_ff=wi.shape[1],
                relative_buckets=buckets, num_encoder_layers=_layers(tensors, "encoder"),
                num_decoder_layers=_layers(tensors, "decoder"), gated=gated)


def config_from_native(folder: Path, tensors: TensorSource) -> T5Config:
    """Our T5Config for a checkpoint that has no `t5pegasus_config.json`: from the T5 PEGASUS release's
    `config.json` when there is one, else from the tensors' shapes (Google mesh-TF T5). See the module doc."""
    tied = not tensors.has("decoder/logits/kernel")
    path = folder / NATIVE_CONFIG
    if not path.is_file():
        sizes = _inferred(tensors)
        gated = sizes.pop("gated")
        return T5Config(**sizes, feed_forward="gated-gelu" if gated else "relu", tie_word_embeddings=tied,
                        dropout_rate=0.0)
    b4k = read_json(path)
    act = b4k.get("hidden_act", "gelu")
    act = act[0] if isinstance(act, list) else act
    gated = any(n.endswith("/DenseReluDense/wi_0/kernel") for n in tensors.tensors)
    if gated and act not in _GATED_FROM_B4K:
        raise UserError(f"{path}: hidden_act {act!r} is not supported; known: {', '.join(sorted(_GATED_FROM_B4K))}")
    if not gated and act != "relu":
        raise UserError(f"{path}: a T5 without a gated feed-forward must use relu, not {act!r}")
    with config_fields(path, " (a bert4keras T5 config.json has hidden_size, num_attention_heads, "
                       "num_hidden_layers, intermediate_size, vocab_size)"):
        d, heads, layers = b4k["hidden_size"], b4k["num_attention_heads"], b4k["num_hidden_layers"]
        sizes = dict(vocab_size=b4k["vocab_size"], d_model=d, d_ff=b4k["intermediate_size"], num_heads=heads,
                     d_kv=b4k.get("attention_head_size") or d // heads, num_encoder_layers=layers,
                     num_decoder_layers=layers)
    return T5Config(**sizes, relative_buckets=b4k.get("relative_attention_num_buckets", 32),
                    relative_max_distance=b4k.get("relative_attention_max_distance", 128),
                    dropout_rate=b4k.get("hidden_dropout_prob", b4k.get("dropout_rate", 0.1)),
                    layer_norm_epsilon=1e-6, feed_forward=_GATED_FROM_B4K[act] if gated else "relu",
                    tie_word_embeddings=tied, scale_logits=True, cross_attention_bias=True, **_vocab_ids(folder))


FORMAT = TFFormat("T5 (mesh-TF)", ROOT, entries, check_exportable, native_config, config_from_native)
