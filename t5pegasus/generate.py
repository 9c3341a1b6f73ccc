"""Decoding: greedy, beam search and sampling, compiled, over a model's KV-cached step function.

    import t5pegasus as tp
    out = tp.generate.generate(tp.generate.T5Decoding(cfg), params, {"source_ids": ids},
                               tp.generate.Settings(max_new_tokens=64, num_beams=4))
    out.tokens, out.lengths, out.scores       # [batch, n, 64], [batch, n], [batch, n]

The implementation lives in `t5pegasus.decoding`; this module is its public face.
"""

from t5pegasus.decoding import (
    DecodingModel,
    GPTDecoding,
    Output,
    Settings,
    Start,
    T5Decoding,
    UniLMDecoding,
    banned_ngram_tokens,
    generate,
    reorder_kv_cache,
    repetition_penalty,
    support,
)

__all__ = ["DecodingModel", "GPTDecoding", "Output", "Settings", "Start", "T5Decoding", "UniLMDecoding",
           "banned_ngram_tokens", "generate", "reorder_kv_cache", "repetition_penalty", "support"]
