"""Learned absolute position embeddings (BERT, GPT-2): rows of a trained [max_len, d] table."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def learned_positions(table: Array, length: int, offset: Array | int = 0) -> Array:
    """[length, d] rows offset .. offset + length - 1 of `table` (offset = cache index when decoding).

    Raises for a static length beyond the table; rows asked for by a traced offset past the end come back
    as NaN (jnp.take's fill mode), so an overlong decode shows up instead of silently reusing the last row.
    """
    if length > table.shape[0]:
        raise ValueError(
            f"sequence of {length} positions exceeds the {table.shape[0]}-row position table; "
            "shorten the input or extend the table with t5pegasus.attention.hierarchical_table"
        )
    return jnp.take(table, jnp.arange(length) + offset, axis=0)


def add_learned_positions(x: Array, table: Array, offset: Array | int = 0) -> Array:
    """x [b, l, d] plus its absolute position embeddings, in x's dtype."""
    return x + learned_positions(table, x.shape[1], offset).astype(x.dtype)[None]
