"""`generate`: one compiled function per (model adapter, settings, input shapes), from inputs to new tokens."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from t5pegasus.decoding.adapters import DecodingModel
from t5pegasus.decoding.search import Output, beam_search, sample_or_greedy
from t5pegasus.decoding.settings import Settings
from t5pegasus.errors import UserError


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def _generate(model: DecodingModel, settings: Settings, params: Any, inputs: dict[str, Array], rng: Array) -> Output:
    start = model.start(params, inputs, settings.copies, settings.max_new_tokens)
    if settings.num_beams > 1:
        return beam_search(model, params, start, settings)
    return sample_or_greedy(model, params, start, settings, rng)


def generate(model: DecodingModel, params: Any, inputs: dict[str, Any], settings: Settings | None = None,
             seed: int | Array = 0, **overrides: Any) -> Output:
    """Decode a batch: `Output(tokens [batch, n, max_new], lengths [batch, n], scores [batch, n])`.

    `model` is a `DecodingModel` (e.g. `T5Decoding(cfg)`), `inputs` its named input arrays (T5: `source_ids`,
    optionally `source_mask`), `settings` a `Settings` (keyword `overrides` replace its fields). Sampling is a
    function of `seed` (an int or a PRNG key) and the batch; greedy and beam search ignore it. The loop runs on
    device; `n` is `num_return_sequences`, best first for beam search.
    """
    settings = settings or Settings()
    if overrides:
        try:
            settings = settings.replace(**overrides)
        except TypeError as e:
            raise UserError(f"unknown decoding setting: {e}") from None
    try:
        hash(model)
    except TypeError:
        raise UserError(f"{type(model).__name__} must be hashable (a frozen dataclass) to be decoded") from None
    rng = jax.random.key(seed) if isinstance(seed, int) else seed
    inputs = {name: jnp.asarray(value) for name, value in inputs.items()}
    return _generate(model, settings, params, inputs, rng)
