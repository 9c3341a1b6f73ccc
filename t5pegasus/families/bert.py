"""The BERT family: BERT, UniLM (BERT with the seq2seq mask) and SimBERT (config and registration)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from t5pegasus.config import StackConfig
from t5pegasus.errors import UserError
from t5pegasus.families import Family, Ref, register

BERT_MASKS = ("bidirectional", "unilm", "causal")
# What one set of BERT weights can be used as. A Google-BERT-named checkpoint (the released SimBERT is one)
# records none of this: bert4keras takes the mask and the pooler as build arguments.
MODEL_KINDS: dict[str, dict[str, Any]] = {
    "bert": dict(mask="bidirectional", pooler_activation="tanh"),
    "unilm": dict(mask="unilm"),  # BERT with the seq2seq mask: generates
    # SimBERT: UniLM whose pooler is linear; its pooled [CLS] vector is the sentence vector.
    "simbert": dict(mask="unilm", pooler_activation="linear"),
    # BERT as a left-to-right language model (bert4keras' application='lm'): the `lm` objective trains it.
    "lm": dict(mask="causal"),
}


@dataclasses.dataclass(frozen=True)
class BertConfig(StackConfig):
    """BERT encoder with pooler and tied MLM head; `mask` picks the attention mask (UniLM = BERT + seq2seq mask).

    `mask="unilm"` builds the mask from segment ids (0 source, 1 target); "causal" is a plain LM mask.
    `conditional_layer_norm` makes every LayerNorm conditional on a vector of `condition_size` (its projection
    starts at zero, so the model starts identical to the unconditioned one). `num_conditions` > 0 adds a learned
    label embedding [num_conditions, condition_size] looked up by an integer label per example (bert4keras'
    conditional LM: `Embedding(num_labels, size)(label)` as `layer_norm_cond`); `condition_labels` names its rows
    (the label vocabulary of string labels, e.g. ("neg", "pos"); empty: the labels are the integers
    0..num_conditions-1). `condition_index` maps a label to its row. `with_pooler` / `with_mlm` say
    whether the pooler and the MLM head exist (HF `BertModel` has no MLM head, `BertForMaskedLM` no pooler).
    Configs saved before the attention switches were nested call the mask `attention`; they still load.
    """

    family: ClassVar[str] = "bert"

    vocab_size: int = 21128
    type_vocab_size: int = 2  # segment (token type) ids: 0 source, 1 target
    mask: str = "bidirectional"  # one of BERT_MASKS
    with_pooler: bool = True
    pooler_activation: str = "tanh"  # "linear" for SimBERT, whose pooled vector is the sentence vector
    with_mlm: bool = True
    conditional_layer_norm: bool = False
    condition_size: int = 0  # width of the condition vector the conditional LayerNorms take
    num_conditions: int = 0  # rows of the learned label embedding (0: none; the condition is a given vector)
    condition_labels: tuple[str, ...] = ()  # the rows' label names (empty: integer labels)
    unk_token_id: int = 100
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, head_dim=8, intermediate_size=64,
                     max_position_embeddings=64, dropout_rate=0.0, unk_token_id=1, cls_token_id=2, sep_token_id=3,
                     mask_token_id=4),
        "bert-base-chinese": dict(),
        "unilm-base": MODEL_KINDS["unilm"],
        "simbert-base": MODEL_KINDS["simbert"],
    }

    @classmethod
    def upgrade(cls, values: dict[str, Any]) -> dict[str, Any]:
        values = dict(values)
        if isinstance(values.get("attention"), str):  # the mask's name before the attention switches nested
            values["mask"] = values.pop("attention")
        return super().upgrade(values)

    def __post_init__(self) -> None:
        self._check(self.mask in BERT_MASKS, f"mask {self.mask!r} is not one of {', '.join(BERT_MASKS)}")
        self._check(self.pooler_activation in ("tanh", "linear"), "pooler_activation must be tanh or linear")
        self._check(self.type_vocab_size > 0, "type_vocab_size must be positive")
        self._check(not self.conditional_layer_norm or self.condition_size > 0,
                    "conditional_layer_norm needs condition_size > 0")
        object.__setattr__(self, "condition_labels", tuple(str(x) for x in self.condition_labels))  # JSON lists
        self._check(self.num_conditions >= 0, "num_conditions must be >= 0")
        self._check(not self.num_conditions or self.conditional_layer_norm,
                    "num_conditions (a label embedding) needs conditional_layer_norm=true and condition_size > 0")
        self._check(not self.condition_labels or len(self.condition_labels) == self.num_conditions,
                    f"condition_labels names {len(self.condition_labels)} labels, num_conditions is "
                    f"{self.num_conditions}")
        self._check(len(set(self.condition_labels)) == len(self.condition_labels), "condition_labels repeat a name")
        self._check_stack(causal=self.mask != "bidirectional", unilm=self.mask == "unilm")

    def condition_index(self, label: str | int) -> int:
        """The label embedding's row of `label` (a name of `condition_labels`, or an integer when it names none);
        a label outside the table is a UserError naming the ones there are."""
        n = self.num_conditions
        if not n:
            raise UserError("this model has no label embedding (num_conditions=0), so it takes no condition label; "
                            "fine-tune it on data with a \"label\" field to add one")
        if self.condition_labels:
            if str(label) in self.condition_labels:
                return self.condition_labels.index(str(label))
            raise UserError(f"condition label {label!r} is not one of the model's labels: "
                            f"{', '.join(self.condition_labels)}")
        text = str(label).strip()
        if isinstance(label, bool) or not (isinstance(label, int) or text.lstrip("-").isdigit()):
            raise UserError(f"condition label {label!r}: this model's labels are the integers 0..{n - 1}")
        if not 0 <= int(text) < n:
            raise UserError(f"condition label {int(text)} is outside the model's labels 0..{n - 1}")
        return int(text)


FAMILY = register(Family(
    name="bert",
    config=BertConfig,
    model=Ref("t5pegasus.models.bert:Bert"),
    objectives=("unilm", "simbert", "lm"),
    decoding=Ref("t5pegasus.decoding.lm_adapters:UniLMDecoding"),
    token_ids={"pad_token_id": ("pad",), "unk_token_id": ("unk",), "cls_token_id": ("bos",),
               "sep_token_id": ("eos",), "mask_token_id": ("mask",)},
    hf=Ref("t5pegasus.convert.bert_hf:FORMAT"),
    hf_model_types=("bert",),
    tf=Ref("t5pegasus.convert.bert_tf:FORMAT"),
    model_kinds=MODEL_KINDS,
    run_config="unilm",
))
