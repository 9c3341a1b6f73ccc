"""The T5 family: T5 / mT5 / T5 PEGASUS encoder-decoders (config and registration)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from t5pegasus.config import AttentionConfig, ConfigBase
from t5pegasus.families import Family, Ref, register

FEED_FORWARD_KINDS = ("relu", "gated-gelu", "gated-gelu-erf", "gated-silu", "gated-relu")
T5_ATTENTION_KINDS = ("softmax",)
T5_POSITION_KINDS = ("relative_bias", "rope")


@dataclasses.dataclass(frozen=True)
class T5Config(ConfigBase):
    """T5 / mT5 / T5 PEGASUS encoder-decoder.

    The T5 PEGASUS release differs from HF mT5 by `cross_attention_bias` (cross-attention adds the decoder's
    relative position bias), `scale_logits` (decoder output times d_model**-0.5 even when untied) and
    exact-erf GELU (`feed_forward="gated-gelu-erf"`). `attention.position="rope"` replaces the relative bias by
    rotary positions in the self-attention of both stacks (no relpos_bias tables; cross-attention gets no
    positions).
    """

    family: ClassVar[str] = "t5"

    vocab_size: int = 32128
    d_model: int = 512
    d_ff: int = 2048  # the feed-forward width
    num_heads: int = 8
    d_kv: int = 64  # per head
    num_encoder_layers: int = 6  # 0: a decoder only
    num_decoder_layers: int = 6
    relative_buckets: int = 32  # rows of each stack's relative position bias table
    relative_max_distance: int = 128  # distances past this share the last bucket
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward: str = "relu"  # one of FEED_FORWARD_KINDS; gated-gelu-erf is T5 PEGASUS's exact GELU
    tie_word_embeddings: bool = True  # the LM head is the embedding table (T5 1.0) or its own (mT5)
    # None: scale the decoder output by d_model**-0.5 exactly when embeddings are tied (HF/T5 behaviour).
    scale_logits: bool | None = None
    cross_attention_bias: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: bool = False
    pad_token_id: int = 0
    eos_token_id: int = 1  # [SEP] for T5 PEGASUS
    unk_token_id: int = 2
    decoder_start_token_id: int = 0  # [CLS] for T5 PEGASUS, pad for T5 / mT5
    initializer_factor: float = 1.0  # scales every init stddev (HF's initializer_factor)
    attention: AttentionConfig = AttentionConfig(position="relative_bias")

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
        self._check_common(("vocab_size", "d_model", "d_ff", "num_heads", "d_kv", "relative_buckets",
                            "relative_max_distance"))
        self._check(self.num_encoder_layers >= 0 and self.num_decoder_layers > 0, "layer counts must be positive")
        self.attention.check("T5Config", kinds=T5_ATTENTION_KINDS, positions=T5_POSITION_KINDS,
                             head_dim=self.d_kv, causal=False, unilm=False)
        self._check(self.relative_bias or not self.cross_attention_bias,
                    "cross_attention_bias adds the decoder's relative position bias to cross-attention; with "
                    f"attention.position={self.attention.position!r} there is no such bias: set "
                    "cross_attention_bias=False")

    @property
    def relative_bias(self) -> bool:
        """Whether the stacks have T5's relative position bias tables (`relpos_bias`); rotary ones have none."""
        return self.attention.position == "relative_bias"

    @property
    def logits_scaled(self) -> bool:
        """Whether the decoder output is multiplied by d_model**-0.5 before the LM head."""
        return self.tie_word_embeddings if self.scale_logits is None else self.scale_logits

    @property
    def gated(self) -> bool:
        return self.feed_forward.startswith("gated-")


FAMILY = register(Family(
    name="t5",
    config=T5Config,
    model=Ref("t5pegasus.models.t5:T5"),
    objectives=("seq2seq",),
    decoding=Ref("t5pegasus.decoding.adapters:T5Decoding"),
    token_ids={"pad_token_id": ("pad",), "eos_token_id": ("eos",), "unk_token_id": ("unk",),
               "decoder_start_token_id": ("decoder_start",)},
    hf=Ref("t5pegasus.convert.t5_hf:FORMAT"),
    hf_model_types=("t5", "mt5"),
    tf=Ref("t5pegasus.convert.t5_tf:FORMAT"),
))
