"""T5 PEGASUS for HF transformers: MT5 plus the cross-attention position bias (shipped by `t5pegasus convert`).

T5 PEGASUS (as bert4keras builds it) is HF's MT5 with one addition: the decoder's cross-attention adds a
relative position bias too, read from the decoder's own table (`decoder.block.0.layer.0.SelfAttention.
relative_attention_bias`) with causal buckets, the query being the decoder position and the key the encoder
position (the bucket of max(query - key, 0)). This file adds that bias and nothing else, so every tensor keeps
its MT5 name and the same folder also loads as a plain `MT5ForConditionalGeneration` (which then drops the
bias). Its erf GELU is HF's `gated-gelu_python`, and the export folds its d_model**-0.5 logit scale into
`lm_head`, so neither needs code here.

    AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)

Works with transformers 5 and 4. Written by the t5pegasus project;
self-contained on purpose (it runs where t5pegasus is not installed).
"""

import torch
import transformers
from transformers.models.mt5.modeling_mt5 import MT5Attention, MT5ForConditionalGeneration, MT5LayerCrossAttention

# transformers 4 adds the attention mask into a position bias it computes itself, not into one it is handed;
# transformers 5 adds the mask separately.
_MASK_IN_BIAS = int(transformers.__version__.split(".")[0]) < 5
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")  # the cache argument's name across versions


def cross_attention_bias(table_owner: MT5Attention, query_length: int, key_length: int,
                         offset: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """[1, heads, query_length, key_length] bias of decoder positions offset..offset+query_length-1 over
    encoder positions 0..key_length-1, from the decoder self-attention's table with its causal buckets."""
    query = torch.arange(query_length, dtype=torch.long, device=device)[:, None] + offset
    key = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
    buckets = table_owner._relative_position_bucket(
        key - query, bidirectional=False, num_buckets=table_owner.relative_attention_num_buckets,
        max_distance=table_owner.relative_attention_max_distance)
    return table_owner.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)


def decoder_offset(kwargs: dict, query_length: int) -> int | torch.Tensor:
    """The absolute position of the first query of this decoder call: what the self-attention cache held before
    it (the cross-attention of block 0 runs after block 0's self-attention has stored this call's keys)."""
    cache = next((kwargs[k] for k in _CACHE_KWARGS if kwargs.get(k) is not None), None)
    self_cache = getattr(cache, "self_attention_cache", None)
    if self_cache is not None:  # an EncoderDecoderCache (transformers 5, and 4.45 on)
        return self_cache.get_seq_length(0) - query_length
    if kwargs.get("query_length") is not None:  # transformers 4 hands the decoder's length so far to the layer
        return kwargs["query_length"] - query_length
    return 0  # no cache: the call holds every position from the first


class T5PegasusLayerCrossAttention(MT5LayerCrossAttention):
    """HF's cross-attention layer, handed the T5 PEGASUS position bias when the stack has none yet (block 0;
    HF's stack then passes block 0's bias on to the other blocks, as it does for self-attention).

    It has no parameters of its own: `table_owner` (the decoder's block-0 self-attention) is kept outside the
    module tree, so its table is saved once, under its MT5 name."""

    table_owner: MT5Attention

    def forward(self, hidden_states, *args, **kwargs):
        if kwargs.get("position_bias") is None:
            query_length = hidden_states.shape[1]
            bias = cross_attention_bias(self.table_owner, query_length, kwargs["key_value_states"].shape[1],
                                        decoder_offset(kwargs, query_length), hidden_states.device)
            mask = kwargs.get("attention_mask")
            if _MASK_IN_BIAS and mask is not None:
                bias = bias + mask
            kwargs["position_bias"] = bias.to(hidden_states.dtype)
        return super().forward(hidden_states, *args, **kwargs)


class T5PegasusForConditionalGeneration(MT5ForConditionalGeneration):
    """`MT5ForConditionalGeneration` whose cross-attention adds the decoder's relative position bias (when the
    config's `cross_attention_bias`, written by the export, is true)."""

    def __init__(self, config):
        super().__init__(config)
        if getattr(config, "cross_attention_bias", True):
            block = self.decoder.block[0]
            layer = block.layer[1]
            # The same module (weights, device, hooks) with the bias added: only its class changes.
            layer.__class__ = T5PegasusLayerCrossAttention
            object.__setattr__(layer, "table_owner", block.layer[0].SelfAttention)
