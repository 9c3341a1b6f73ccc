"""Hierarchical decomposition: extend a trained learned-position table from n to n * n positions.

With the trained table p [n, d] and a = alpha (0.4): u = (p - a p_0) / (1 - a), and position k maps to
a u[k // n] + (1 - a) u[k % n]. For k < n, k // n = 0 and this is a u_0 + (1 - a) u_k = p_k exactly, so
a model keeps its behaviour on the lengths it was trained on and gets distinct vectors up to n^2.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def hierarchical_table(table: Array, length: int | None = None, alpha: float = 0.4) -> Array:
    """[length, d] extended table (default length n * n) from a trained [n, d] table; a pure array function,
    so apply it to the parameter once (e.g. when converting or loading) and use the result as the table."""
    n = table.shape[0]
    length = n * n if length is None else length
    if not 0 < length <= n * n:
        raise ValueError(f"hierarchical positions cover 1..{n * n} for a table of {n} rows, got {length}")
    return hierarchical_rows(table, jnp.arange(length), alpha)


def hierarchical_rows(table: Array, positions: Array, alpha: float = 0.4) -> Array:
    """Rows [..., d] of the extended table at int `positions` (any shape) without building the n * n table,
    which a model uses at every call (a 512-row table extends to 262144 rows). Positions at or past n * n
    come back as NaN (as an overlong lookup in a learned table does)."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    n = table.shape[0]
    t = table.astype(jnp.float32)
    u = (t - alpha * t[:1]) / (1.0 - alpha)
    positions = jnp.asarray(positions)
    high = jnp.take(u, positions // n, axis=0, mode="fill", fill_value=jnp.nan)
    low = jnp.take(u, positions % n, axis=0)
    return (alpha * high + (1.0 - alpha) * low).astype(table.dtype)
