"""Model configurations: frozen dataclasses with named presets and JSON load/save.

One dataclass per family (T5Config here; BertConfig and GPTConfig beside it). A config is the whole
architectural description: two models built from equal configs have the same parameter tree.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar, TypeVar

from t5pegasus import fileio
from t5pegasus.attention.kernels import BACKENDS
from t5pegasus.errors import UserError

C = TypeVar("C", bound="ConfigBase")

DTYPES = ("float32", "bfloat16", "float16")
_FAMILIES: dict[str, type[ConfigBase]] = {}


def _close_matches(name: str, choices: list[str]) -> str:
    import difflib

    near = difflib.get_close_matches(name, choices, n=3)
    return f" (did you mean {', '.join(near)}?)" if near else ""


@dataclasses.dataclass(frozen=True)
class ConfigBase:
    """Presets, validated replacement and JSON round trips shared by every family's config."""

    family: ClassVar[str] = ""
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.family:
            _FAMILIES[cls.family] = cls

    @classmethod
    def presets(cls) -> list[str]:
        """Names accepted by `preset`."""
        return sorted(cls.PRESETS)

    @classmethod
    def preset(cls: type[C], name: str, **overrides: Any) -> C:
        """The named preset, with `overrides` applied. Unknown names are a UserError listing the choices."""
        if name not in cls.PRESETS:
            raise UserError(
                f"unknown {cls.__name__} preset {name!r}{_close_matches(name, cls.presets())}; "
                f"choose one of: {', '.join(cls.presets())}"
            )
        return cls.from_dict({**cls.PRESETS[name], **overrides})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """Build from a dict; a key that is not a field is a UserError naming the fields that exist."""
        values = {k: v for k, v in values.items() if k != "family"}
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            names = cls.field_names()
            raise UserError(
                f"unknown {cls.__name__} field(s): "
                + ", ".join(f"{u!r}{_close_matches(u, names)}" for u in unknown)
                + f"; the fields are: {', '.join(names)}"
            )
        return cls(**values)

    def replace(self: C, **changes: Any) -> C:
        """A copy with `changes` applied (validated like `from_dict`)."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON, atomically."""
        fileio.write_text(path, self.to_json())

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        """Read a config written by `save` (the family must match this class)."""
        config = load_config(path)
        if not isinstance(config, cls):
            raise UserError(f"{path} holds a {type(config).__name__}, not a {cls.__name__}")
        return config

    def _check(self, condition: bool, message: str) -> None:
        if not condition:
            raise UserError(f"invalid {type(self).__name__}: {message}")


def load_config(path: str | os.PathLike) -> ConfigBase:
    """Read any family's config JSON (the `family` key picks the class)."""
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid JSON: {e}") from None
    return load_config_dict(values, str(path))


def load_config_dict(values: dict[str, Any], where: str = "config") -> ConfigBase:
    """Any family's config from a dict with a `family` key."""
    family = values.get("family")
    if family not in _FAMILIES:
        raise UserError(f"{where} names family {family!r}; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[family].from_dict(values)


FEED_FORWARD_KINDS = ("relu", "gated-gelu", "gated-gelu-erf", "gated-silu", "gated-relu")

# Attention switches (docs/attention.md has the table of what combines with what, and why).
ATTENTION_KINDS = ("softmax", "linear", "performer", "nystrom")
POSITION_KINDS = ("learned", "rope", "rerope", "leaky_rerope", "hierarchical", "none")
T5_POSITION_KINDS = ("relative_bias", "rope")
ROPE_LAYOUTS = ("interleaved", "half")
ATTENTION_BACKENDS = ("auto", *BACKENDS)
ROTARY_KINDS = ("rope", "rerope", "leaky_rerope")
_SCORE_BACKENDS = ("auto", "einsum")  # what a path that builds its own score matrix runs on


# The switches that change what a model computes (attention_backend and the rope/rerope parameters only
# matter once one of these is switched on).
ATTENTION_SWITCHES = ("attention_kind", "position_kind", "realformer")


def nondefault_attention_switches(cfg: ConfigBase) -> dict[str, Any]:
    """The attention switches of `cfg` that differ from its family's defaults, e.g. {"position_kind": "rope"};
    empty for a standard model. HF / TF / Megatron checkpoints cannot express them, so a converter should
    refuse a config for which this is not empty."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    return {name: getattr(cfg, name) for name in ATTENTION_SWITCHES
            if name in defaults and getattr(cfg, name) != defaults[name]}


def _one_of(cfg: ConfigBase, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    cfg._check(value in choices, f"{name} {value!r} is not one of {', '.join(choices)}")


def _check_rope(cfg: T5Config | BertConfig | GPTConfig, head_dim: int, position_kind: str) -> None:
    """RoPE-family fields: layout, base, an even head dim and the ReRoPE window / leak."""
    _one_of(cfg, "rope_layout", ROPE_LAYOUTS)
    if position_kind not in ROTARY_KINDS:
        return
    cfg._check(head_dim % 2 == 0, f"position_kind={position_kind!r} rotates pairs of head dims; "
               f"the head dim {head_dim} must be even")
    cfg._check(cfg.rope_base > 0, "rope_base must be positive")
    if position_kind in ("rerope", "leaky_rerope"):
        cfg._check(cfg.rerope_window > 0, "rerope_window must be positive")
    if position_kind == "leaky_rerope":
        cfg._check(cfg.rerope_leaky > 1, "rerope_leaky must be > 1 (distances beyond the window "
                   "are divided by it)")


def _check_attention(cfg: BertConfig | GPTConfig, causal: bool, unilm: bool) -> None:
    """The BERT/GPT attention switches: each value, then which kinds combine (see docs/attention.md)."""
    for name, choices in (("attention_kind", ATTENTION_KINDS), ("position_kind", POSITION_KINDS),
                          ("attention_backend", ATTENTION_BACKENDS)):
        _one_of(cfg, name, choices)
    kind, position = cfg.attention_kind, cfg.position_kind
    _check_rope(cfg, cfg.head_dim, position)
    if kind != "softmax":
        cfg._check(position not in ("rerope", "leaky_rerope"),
                   f"position_kind={position!r} needs attention_kind='softmax': ReRoPE picks between score "
                   f"matrices per (query, key), and {kind} attention never forms one")
        cfg._check(not cfg.realformer, f"realformer needs attention_kind='softmax': {kind} attention has no "
                   "score matrix to carry to the next layer")
    if kind == "nystrom":
        # linear and performer apply the UniLM mask exactly (source keys bidirectional + a causal scan over the
        # target keys); Nystromformer's landmarks mix every position, so it has neither a causal nor a UniLM form.
        cfg._check(not unilm, "attention='unilm' needs attention_kind='softmax', 'linear' or 'performer': the "
                   "UniLM seq2seq mask hides later target tokens, and nystrom's landmarks average over the whole "
                   "sequence (it has no causal form either)")
        cfg._check(not causal, "attention_kind='nystrom' has no causal form (its landmarks average over future "
                   "positions); use it with a bidirectional BERT, or pick linear or performer")
    explicit_scores = cfg.realformer or position in ("rerope", "leaky_rerope")
    if kind != "softmax" or explicit_scores:
        path = f"attention_kind={kind!r}" if kind != "softmax" else "realformer / ReRoPE (explicit score matrices)"
        cfg._check(cfg.attention_backend in _SCORE_BACKENDS,
                   f"attention_backend={cfg.attention_backend!r} has no effect with {path}, which does not run "
                   "the fused softmax kernels; leave it 'auto'")
    for name in ("performer_features", "nystrom_landmarks", "nystrom_pinv_iterations"):
        cfg._check(getattr(cfg, name) > 0, f"{name} must be positive")
    cfg._check(0.0 <= cfg.hierarchical_alpha < 1.0, "hierarchical_alpha must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class T5Config(ConfigBase):
    """T5 / mT5 / T5 PEGASUS encoder-decoder.

    The T5 PEGASUS release differs from HF mT5 by `cross_attention_bias` (cross-attention adds the decoder's
    relative position bias), `scale_logits` (decoder output times d_model**-0.5 even when untied) and
    exact-erf GELU (`feed_forward="gated-gelu-erf"`).
    """

    family: ClassVar[str] = "t5"

    vocab_size: int = 32128
    d_model: int = 512
    d_ff: int = 2048
    num_heads: int = 8
    d_kv: int = 64
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    relative_buckets: int = 32
    relative_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward: str = "relu"
    tie_word_embeddings: bool = True
    # None: scale the decoder output by d_model**-0.5 exactly when embeddings are tied (HF/T5 behaviour).
    scale_logits: bool | None = None
    cross_attention_bias: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: bool = False
    pad_token_id: int = 0
    eos_token_id: int = 1
    unk_token_id: int = 2
    decoder_start_token_id: int = 0
    initializer_factor: float = 1.0
    # Attention switches (docs/attention.md). "rope" replaces the relative bias by rotary positions in the
    # self-attention of both stacks (no relpos_bias tables; cross-attention gets no positions).
    position_kind: str = "relative_bias"
    rope_layout: str = "interleaved"
    rope_base: float = 10000.0
    attention_backend: str = "auto"
    realformer: bool = False

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(vocab_size=128, d_model=32, d_ff=64, num_heads=4, d_kv=8, num_encoder_layers=2,
                     num_decoder_layers=2, feed_forward="gated-gelu", tie_word_embeddings=False,
                     dropout_rate=0.0),
        "t5-small": dict(vocab_size=32128, d_model=512, d_ff=2048, num_heads=8, d_kv=64, num_encoder_layers=6,
                         num_decoder_layers=6, feed_forward="relu", tie_word_embeddings=True),
        "t5-v1_1-small": dict(vocab_size=32128, d_model=512, d_ff=1024, num_heads=6, d_kv=64,
                              num_encoder_layers=8, num_decoder_layers=8, feed_forward="gated-gelu",
                              tie_word_embeddings=False),
        "mt5-small": dict(vocab_size=250112, d_model=512, d_ff=1024, num_heads=6, d_kv=64, num_encoder_layers=8,
                          num_decoder_layers=8, feed_forward="gated-gelu", tie_word_embeddings=False),
        "t5-pegasus-small": dict(vocab_size=50000, d_model=512, d_ff=1024, num_heads=6, d_kv=64,
                                 num_encoder_layers=8, num_decoder_layers=8, feed_forward="gated-gelu-erf",
                                 tie_word_embeddings=False, scale_logits=True, cross_attention_bias=True,
                                 pad_token_id=0, unk_token_id=100, decoder_start_token_id=101,
                                 eos_token_id=102),
        "t5-pegasus-base": dict(vocab_size=50000, d_model=768, d_ff=2048, num_heads=12, d_kv=64,
                                num_encoder_layers=12, num_decoder_layers=12, feed_forward="gated-gelu-erf",
                                tie_word_embeddings=False, scale_logits=True, cross_attention_bias=True,
                                pad_token_id=0, unk_token_id=100, decoder_start_token_id=101,
                                eos_token_id=102),
    }

    def __post_init__(self) -> None:
        self._check(self.feed_forward in FEED_FORWARD_KINDS,
                    f"feed_forward {self.feed_forward!r} is not one of {', '.join(FEED_FORWARD_KINDS)}")
        self._check(self.dtype in DTYPES and self.param_dtype in DTYPES,
                    f"dtype and param_dtype must be one of {', '.join(DTYPES)}")
        for name in ("vocab_size", "d_model", "d_ff", "num_heads", "d_kv", "relative_buckets",
                     "relative_max_distance"):
            self._check(getattr(self, name) > 0, f"{name} must be positive")
        self._check(self.num_encoder_layers >= 0 and self.num_decoder_layers > 0, "layer counts must be positive")
        self._check(0.0 <= self.dropout_rate < 1.0, "dropout_rate must be in [0, 1)")
        _one_of(self, "position_kind", T5_POSITION_KINDS)
        _one_of(self, "attention_backend", ATTENTION_BACKENDS)
        _check_rope(self, self.d_kv, self.position_kind)
        self._check(self.position_kind == "relative_bias" or not self.cross_attention_bias,
                    "cross_attention_bias adds the decoder's relative position bias to cross-attention; with "
                    f"position_kind={self.position_kind!r} there is no such bias: set cross_attention_bias=False")
        self._check(not self.realformer or self.attention_backend in _SCORE_BACKENDS,
                    f"attention_backend={self.attention_backend!r} has no effect with realformer (explicit score "
                    "matrices); leave it 'auto'")

    @property
    def logits_scaled(self) -> bool:
        """Whether the decoder output is multiplied by d_model**-0.5 before the LM head."""
        return self.tie_word_embeddings if self.scale_logits is None else self.scale_logits

    @property
    def gated(self) -> bool:
        return self.feed_forward.startswith("gated-")


BERT_ATTENTION = ("bidirectional", "unilm", "causal")
ACTIVATION_NAMES = ("gelu", "gelu-erf", "relu", "silu")


@dataclasses.dataclass(frozen=True)
class BertConfig(ConfigBase):
    """BERT encoder with pooler and tied MLM head; `attention` picks the mask (UniLM = BERT + seq2seq mask).

    `attention="unilm"` builds the mask from segment ids (0 source, 1 target); "causal" is a plain LM mask.
    `conditional_layer_norm` makes every LayerNorm conditional on a vector of `condition_size` (its projection
    starts at zero, so the model starts identical to the unconditioned one). `with_pooler` / `with_mlm` say
    whether the pooler and the MLM head exist (HF `BertModel` has no MLM head, `BertForMaskedLM` no pooler).
    """

    family: ClassVar[str] = "bert"

    vocab_size: int = 21128
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    head_dim: int = 64
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu-erf"
    layer_norm_epsilon: float = 1e-12
    dropout_rate: float = 0.1
    attention: str = "bidirectional"
    with_pooler: bool = True
    pooler_activation: str = "tanh"
    with_mlm: bool = True
    conditional_layer_norm: bool = False
    condition_size: int = 0
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: bool = False
    pad_token_id: int = 0
    unk_token_id: int = 100
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    # Attention switches (docs/attention.md): kernel kind, positions, RealFormer, softmax backend.
    attention_kind: str = "softmax"
    position_kind: str = "learned"
    rope_layout: str = "interleaved"
    rope_base: float = 10000.0
    rerope_window: int = 512
    rerope_leaky: float = 16.0
    hierarchical_alpha: float = 0.4
    realformer: bool = False
    attention_backend: str = "auto"
    performer_features: int = 128
    performer_redraw: bool = True
    nystrom_landmarks: int = 64
    nystrom_pinv_iterations: int = 6

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, head_dim=8, intermediate_size=64,
                     max_position_embeddings=64, dropout_rate=0.0, unk_token_id=1, cls_token_id=2, sep_token_id=3,
                     mask_token_id=4),
        "bert-base-chinese": dict(),
        "unilm-base": dict(attention="unilm"),
        # SimBERT: UniLM whose pooler is linear (its output is the sentence vector).
        "simbert-base": dict(attention="unilm", pooler_activation="linear"),
    }

    def __post_init__(self) -> None:
        self._check(self.attention in BERT_ATTENTION, f"attention {self.attention!r} is not one of "
                    f"{', '.join(BERT_ATTENTION)}")
        self._check(self.hidden_act in ACTIVATION_NAMES,
                    f"hidden_act {self.hidden_act!r} is not one of {', '.join(ACTIVATION_NAMES)}")
        self._check(self.pooler_activation in ("tanh", "linear"), "pooler_activation must be tanh or linear")
        self._check(self.dtype in DTYPES and self.param_dtype in DTYPES,
                    f"dtype and param_dtype must be one of {', '.join(DTYPES)}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            self._check(getattr(self, name) > 0, f"{name} must be positive")
        self._check(0.0 <= self.dropout_rate < 1.0, "dropout_rate must be in [0, 1)")
        self._check(not self.conditional_layer_norm or self.condition_size > 0,
                    "conditional_layer_norm needs condition_size > 0")
        _check_attention(self, causal=self.attention != "bidirectional", unilm=self.attention == "unilm")


@dataclasses.dataclass(frozen=True)
class GPTConfig(ConfigBase):
    """GPT-2 style decoder: pre-LN blocks, learned positions, tanh GELU, LM head tied to the token embedding."""

    family: ClassVar[str] = "gpt"

    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    head_dim: int = 64
    intermediate_size: int = 3072
    max_position_embeddings: int = 1024
    hidden_act: str = "gelu"
    layer_norm_epsilon: float = 1e-5
    dropout_rate: float = 0.1
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: bool = False
    pad_token_id: int = 0
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    # Attention switches (docs/attention.md): kernel kind, positions, RealFormer, softmax backend.
    attention_kind: str = "softmax"
    position_kind: str = "learned"
    rope_layout: str = "interleaved"
    rope_base: float = 10000.0
    rerope_window: int = 512
    rerope_leaky: float = 16.0
    hierarchical_alpha: float = 0.4
    realformer: bool = False
    attention_backend: str = "auto"
    performer_features: int = 128
    performer_redraw: bool = True
    nystrom_landmarks: int = 64
    nystrom_pinv_iterations: int = 6

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, head_dim=8, intermediate_size=128,
                     max_position_embeddings=64, dropout_rate=0.0, bos_token_id=1, eos_token_id=1),
        "gpt2": dict(),
        # CPM-LM 2.6B (pre-LN GPT-2). Its special ids belong to its sentencepiece tokenizer: override them
        # from the tokenizer (these zeros only keep the ids inside the vocabulary).
        "cpm-lm": dict(vocab_size=30000, hidden_size=2560, num_layers=32, num_heads=32, head_dim=80,
                       intermediate_size=10240, max_position_embeddings=1024, pad_token_id=0, bos_token_id=0,
                       eos_token_id=0),
    }

    def __post_init__(self) -> None:
        self._check(self.hidden_act in ACTIVATION_NAMES,
                    f"hidden_act {self.hidden_act!r} is not one of {', '.join(ACTIVATION_NAMES)}")
        self._check(self.dtype in DTYPES and self.param_dtype in DTYPES,
                    f"dtype and param_dtype must be one of {', '.join(DTYPES)}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim", "intermediate_size",
                     "max_position_embeddings"):
            self._check(getattr(self, name) > 0, f"{name} must be positive")
        self._check(0.0 <= self.dropout_rate < 1.0, "dropout_rate must be in [0, 1)")
        _check_attention(self, causal=True, unilm=False)
