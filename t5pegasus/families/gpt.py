"""The GPT family: GPT-2 and CPM-LM decoder-only language models (config and registration)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from t5pegasus.config import StackConfig
from t5pegasus.families import Family, Ref, register


@dataclasses.dataclass(frozen=True)
class GPTConfig(StackConfig):
    """GPT-2 style decoder: pre-LN blocks, learned positions, tanh GELU, LM head tied to the token embedding."""

    family: ClassVar[str] = "gpt"

    vocab_size: int = 50257
    max_position_embeddings: int = 1024
    hidden_act: str = "gelu"  # GPT-2's tanh approximation
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int = 50256  # GPT-2's one special token <|endoftext|> starts and ends documents
    eos_token_id: int = 50256

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
        self._check_stack(causal=True, unilm=False)


FAMILY = register(Family(
    name="gpt",
    config=GPTConfig,
    model=Ref("t5pegasus.models.gpt:GPT"),
    objectives=("lm",),
    decoding=Ref("t5pegasus.decoding.lm_adapters:GPTDecoding"),
    # GPT-2 has one special token: a tokenizer without a bos starts documents with its eos.
    token_ids={"pad_token_id": ("pad",), "eos_token_id": ("eos",), "bos_token_id": ("bos", "eos")},
    hf=Ref("t5pegasus.convert.gpt2_hf:FORMAT"),
    hf_model_types=("gpt2",),
    tf=Ref("t5pegasus.convert.gpt2_tf:FORMAT"),
    megatron=Ref("t5pegasus.convert.megatron"),
    run_config="gpt-lm",
))
