"""Model-agnostic attention: dot-product kernels, masks, position encodings and efficient attention kinds."""

from t5pegasus.attention.dot_product import (
    attention_from_scores,
    attention_scores,
    dot_product_attention,
    einsum_attention,
    masked_softmax,
    memory_attention,
    memory_layout,
)
from t5pegasus.attention.hierarchical import hierarchical_rows, hierarchical_table
from t5pegasus.attention.kernels import BACKENDS, resolve_backend
from t5pegasus.attention.linear import elu_feature_map, feature_attention, linear_attention
from t5pegasus.attention.masks import (
    causal_mask,
    combine,
    key_padding_mask,
    mask_value,
    padding_mask,
    segment_mask,
    unilm_mask,
)
from t5pegasus.attention.nystrom import newton_schulz_pinv, nystrom_attention, segment_means
from t5pegasus.attention.performer import favor_features, orthogonal_random_features, performer_attention
from t5pegasus.attention.position import relative_position_bucket, relative_positions, relative_positions_of
from t5pegasus.attention.realformer import residual_attention
from t5pegasus.attention.rerope import (
    rerope_decode_scores,
    rerope_relative,
    rerope_scores,
)
from t5pegasus.attention.rope import apply_rope, layout_permutation, rope_angles, rotate

__all__ = [
    "BACKENDS",
    "apply_rope",
    "attention_from_scores",
    "attention_scores",
    "causal_mask",
    "combine",
    "dot_product_attention",
    "einsum_attention",
    "elu_feature_map",
    "favor_features",
    "feature_attention",
    "hierarchical_rows",
    "hierarchical_table",
    "key_padding_mask",
    "layout_permutation",
    "linear_attention",
    "mask_value",
    "masked_softmax",
    "memory_attention",
    "memory_layout",
    "newton_schulz_pinv",
    "nystrom_attention",
    "orthogonal_random_features",
    "padding_mask",
    "performer_attention",
    "relative_position_bucket",
    "relative_positions",
    "relative_positions_of",
    "rerope_decode_scores",
    "rerope_relative",
    "rerope_scores",
    "residual_attention",
    "resolve_backend",
    "rope_angles",
    "rotate",
    "segment_mask",
    "segment_means",
    "unilm_mask",
]
