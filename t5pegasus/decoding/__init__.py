"""Compiled decoding (greedy, beam search, sampling) over a model's cached step function; see `generate`."""

from t5pegasus.decoding.adapters import DecodingModel, Start, T5Decoding, reorder_kv_cache, repeat_rows
from t5pegasus.decoding.api import generate
from t5pegasus.decoding.lm_adapters import GPTDecoding, UniLMDecoding, left_align
from t5pegasus.decoding.processors import banned_ngram_tokens, repetition_penalty, support
from t5pegasus.decoding.search import Output, beam_search, sample_or_greedy
from t5pegasus.decoding.settings import Settings

__all__ = ["DecodingModel", "GPTDecoding", "Output", "UniLMDecoding", "left_align", "Settings", "Start",
           "T5Decoding", "banned_ngram_tokens", "beam_search", "generate", "reorder_kv_cache", "repeat_rows",
           "repetition_penalty", "sample_or_greedy", "support"]
