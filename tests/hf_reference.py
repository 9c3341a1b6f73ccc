"""Helpers for parity tests: small random HF transformers models (offline, float32) saved to a folder."""

from __future__ import annotations

import numpy as np
import torch
import transformers


def small_t5(kind: str, folder: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random HF T5 (T5 1.0: relu, tied, rescaled) or MT5 (gated-gelu, untied) saved to `folder`."""
    torch.manual_seed(seed)
    common = dict(vocab_size=101, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
                  dropout_rate=0.0, relative_attention_num_buckets=8, relative_attention_max_distance=20)
    common.update(overrides)
    if kind == "t5":
        model = transformers.T5ForConditionalGeneration(
            transformers.T5Config(feed_forward_proj="relu", tie_word_embeddings=True, **common))
    else:
        model = transformers.MT5ForConditionalGeneration(
            transformers.MT5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False, **common))
        # transformers 5 ties every head at construction; give the head its own weights, as mT5 has.
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.2)
    model.eval()
    model.save_pretrained(folder)
    return model


def torch_bucket(relative_position: np.ndarray, bidirectional: bool, num_buckets: int, max_distance: int):
    """HF's own bucket function, for comparison."""
    from transformers.models.t5.modeling_t5 import T5Attention

    return T5Attention._relative_position_bucket(
        torch.tensor(relative_position), bidirectional=bidirectional, num_buckets=num_buckets,
        max_distance=max_distance).numpy()
