"""Model-agnostic attention: dot-product kernels, masks and position encodings."""

from t5pegasus.attention.dot_product import attention_scores, dot_product_attention, masked_softmax
from t5pegasus.attention.masks import (
    causal_mask,
    combine,
    key_padding_mask,
    mask_value,
    padding_mask,
    unilm_mask,
)
from t5pegasus.attention.position import relative_position_bucket, relative_positions

__all__ = [
    "attention_scores",
    "causal_mask",
    "combine",
    "dot_product_attention",
    "key_padding_mask",
    "mask_value",
    "masked_softmax",
    "padding_mask",
    "relative_position_bucket",
    "relative_positions",
    "unilm_mask",
]
