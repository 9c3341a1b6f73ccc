"""What decoding needs from a model: a small interface, and its T5 (encoder-decoder) implementation.

A model is decoded through a `DecodingModel`:

- `start(params, inputs, copies, max_new_tokens) -> Start`: run everything before the first new token
  (encode the source, or prefill a prompt) for a batch repeated `copies` times per example (beams or samples),
  and return the model state plus the prefix: the tokens already in each row (T5: the decoder start token;
  GPT: the prompt). The state has consumed every prefix token but the last, which the loop feeds first.
- `step(params, state, ids [rows, 1]) -> (logits [rows, vocab] float32, state)`: one cached step.
- `reorder(state, index [rows]) -> state`: gather rows (beam search); row r of the result is row index[r].
  Indices always stay within one example's copies, so per-example constants (encoder states, the projected
  cross-attention keys/values) need no gathering: T5 keeps them once per example, not once per row.

Implementations are frozen dataclasses (hashable), so they are static arguments of the compiled loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax import Array

from t5pegasus.errors import UserError
from t5pegasus.families import T5Config

SELF_ATTENTION_CACHE = ("cached_key", "cached_value")


class Start(NamedTuple):
    """The model state after `start`, and each row's prefix tokens [rows, P] with their validity [rows, P]."""

    state: Any
    prefix: Array
    prefix_valid: Array


class DecodingModel(Protocol):
    """Everything the decoding loop needs from a model (see the module docstring)."""

    eos_token_id: int
    pad_token_id: int

    def start(self, params: Any, inputs: dict[str, Array], copies: int, max_new_tokens: int) -> Start: ...

    def step(self, params: Any, state: Any, ids: Array) -> tuple[Array, Any]: ...

    def reorder(self, state: Any, index: Array) -> Any: ...


def reorder_kv_cache(cache: Any, index: Array) -> Any:
    """Gather rows of a flax "cache" collection's self-attention keys/values; leave everything else.

    Cached keys/values are [..., batch, length, heads, head_dim] (a leading layers axis when layers are
    scanned), so the batch axis is ndim - 4. Everything else is equal across an example's copies and is
    skipped: cross-attention memory, and the GPT/BERT `DecodeState` rows (slot validity and UniLM segment
    counts: the same prompt, then one real target token per step in every copy).
    """

    def gather(path: tuple, leaf: Array) -> Array:
        name = getattr(path[-1], "key", None)
        if name in SELF_ATTENTION_CACHE:
            return jnp.take(leaf, index, axis=leaf.ndim - 4)
        return leaf

    return jax.tree_util.tree_map_with_path(gather, cache)


def repeat_rows(x: Array, copies: int) -> Array:
    """Each row repeated `copies` times consecutively (example-major, as beams and samples are laid out)."""
    return x if copies == 1 else jnp.repeat(x, copies, axis=0)


def input_ids(inputs: dict[str, Array], ids_key: str, mask_key: str, default_mask: Any,
              who: str) -> tuple[Array, Array]:
    """(ids [batch, length] int32, mask bool) of a decoding input: `inputs[ids_key]` and `inputs[mask_key]`,
    or `default_mask(ids)` when no mask is given; `who` names the adapter in the errors."""
    if ids_key not in inputs:
        raise UserError(f"{who} decoding needs inputs[{ids_key!r}]; got keys {sorted(inputs)}")
    ids = jnp.asarray(inputs[ids_key], jnp.int32)
    if ids.ndim != 2:
        raise UserError(f"{ids_key} must be [batch, length], got shape {ids.shape}")
    mask = inputs.get(mask_key)
    return ids, default_mask(ids) if mask is None else jnp.asarray(mask, jnp.bool_)


@dataclasses.dataclass(frozen=True)
class CachedDecoding:
    """What the adapters share: the model config, the end and pad ids it names, and `reorder` of a state whose
    `"cache"` is the model's flax cache collection (the rest of such a state is the same in every copy of an
    example, so it needs no gathering). `input_name` is what its inputs are called: `<name>_ids` /
    `<name>_mask`."""

    cfg: Any
    input_name: ClassVar[str] = "source"

    @property
    def eos_token_id(self) -> int:
        return self.cfg.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.cfg.pad_token_id

    def reorder(self, state: Any, index: Array) -> Any:
        return {**state, "cache": reorder_kv_cache(state["cache"], index)}


@dataclasses.dataclass(frozen=True)
class T5Decoding(CachedDecoding):
    """T5 / mT5 / T5 PEGASUS: encode `inputs["source_ids"]` (mask: `inputs["source_mask"]`, default
    ids != pad) once, then decode from `decoder_start_token_id` ([CLS] for T5 PEGASUS) until `eos_token_id`
    ([SEP]), both taken from the config."""

    cfg: T5Config

    def _model(self) -> Any:
        from t5pegasus.models.t5 import T5

        return T5(self.cfg)

    def start(self, params: Any, inputs: dict[str, Array], copies: int, max_new_tokens: int) -> Start:
        from t5pegasus.models.t5 import T5, init_cache

        ids, mask = input_ids(inputs, "source_ids", "source_mask", lambda x: x != self.cfg.pad_token_id, "T5")
        model = self._model()
        encoded = model.apply({"params": params}, ids, mask, method=T5.encode)
        cache = init_cache(model, params, encoded, mask, max_length=max_new_tokens, copies=copies)
        rows = encoded.shape[0] * copies
        prefix = jnp.full((rows, 1), self.cfg.decoder_start_token_id, jnp.int32)
        return Start({"cache": cache, "encoded": encoded, "mask": mask}, prefix, jnp.ones((rows, 1), jnp.bool_))

    def step(self, params: Any, state: Any, ids: Array) -> tuple[Array, Any]:
        from t5pegasus.models.t5 import decode_step

        logits, cache = decode_step(self._model(), params, state["cache"], state["encoded"], state["mask"], ids)
        return logits[:, -1], {**state, "cache": cache}
