"""The 2-d matmul behind every projection, with a backward pass laid out for the CPU's fast dot kernels.

Autodiff computes a weight gradient as x^T dy: a dot contracting the token axis of both operands. XLA:CPU
hands that layout to its Eigen fallback, which ran it 8-19% slower than the YNNPACK kernels it uses for
plain [m, k] x [k, n] dots (t5-pegasus-small shapes, 2-core x86). On the CPU backend, `matmul`'s custom
backward therefore materialises x^T (a copy of the activations, a few MB) behind an optimisation barrier, so
XLA cannot fold the transpose back into the dot, and the weight gradient becomes a plain dot. Elsewhere
(GPU, TPU), where the dot libraries take transposed operands natively, it is `jnp.dot` and its usual VJP.
The values are the same dot products either way; only the kernel and accumulation order differ.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import Array


def matmul(x: Array, w: Array, out_dtype: jnp.dtype | None = None) -> Array:
    """x [m, k] @ w [k, n] -> [m, n], accumulated (and returned) in `out_dtype` when given."""
    if jax.default_backend() != "cpu":
        return jnp.dot(x, w, preferred_element_type=out_dtype)
    return _cpu_matmul(x, w, None if out_dtype is None else jnp.dtype(out_dtype))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _cpu_matmul(x: Array, w: Array, out_dtype: jnp.dtype | None) -> Array:
    return jnp.dot(x, w, preferred_element_type=out_dtype)


def _forward(x: Array, w: Array, out_dtype: jnp.dtype | None) -> tuple[Array, tuple[Array, Array]]:
    return _cpu_matmul(x, w, out_dtype), (x, w)


def _backward(out_dtype: jnp.dtype | None, residuals: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
    x, w = residuals
    dx = jnp.dot(dy, w.T.astype(dy.dtype), preferred_element_type=x.dtype)
    x_t = jax.lax.optimization_barrier(x.T.astype(dy.dtype))
    dw = jnp.dot(x_t, dy, preferred_element_type=w.dtype)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_cpu_matmul.defvjp(_forward, _backward)
