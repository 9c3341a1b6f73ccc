"""`models.matmul`: the CPU custom backward gives jnp.dot's gradients and a weight-gradient dot the fast
kernels take (no dot contracting the token axis of both operands)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5pegasus.models.matmul import matmul


def _loss(mm, x, w, out_dtype):
    return jnp.sum(jnp.sin(mm(x, w, out_dtype).astype(jnp.float32)))


@pytest.mark.parametrize("dtype,out_dtype,tol", [(jnp.float32, None, 1e-5), (jnp.float32, jnp.float32, 1e-5),
                                                 (jnp.bfloat16, jnp.float32, 2e-2), (jnp.bfloat16, None, 5e-2)])
def test_values_and_gradients_equal_jnp_dot(dtype, out_dtype, tol):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(48, 40)), dtype)
    w = jnp.asarray(rng.normal(size=(40, 24)) * 0.2, dtype)
    ref = lambda a, b, o: jnp.dot(a, b, preferred_element_type=o)
    y, y_ref = matmul(x, w, out_dtype), ref(x, w, out_dtype)
    assert y.dtype == y_ref.dtype
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32), rtol=tol, atol=tol)
    grads = jax.grad(_loss, argnums=(1, 2))(matmul, x, w, out_dtype)
    grads_ref = jax.grad(_loss, argnums=(1, 2))(ref, x, w, out_dtype)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert g.dtype == g_ref.dtype and g.shape == g_ref.shape
        scale = float(jnp.max(jnp.abs(g_ref.astype(jnp.float32))))
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(g_ref, np.float32), atol=tol * scale)


def test_cpu_weight_gradient_is_a_plain_dot():
    x = jnp.ones((64, 32), jnp.float32)
    w = jnp.ones((32, 16), jnp.float32)
    hlo = jax.jit(jax.grad(lambda a, b: _loss(matmul, a, b, None), argnums=(0, 1))).lower(x, w).compile().as_text()
    transposed = r"lhs_contracting_dims=\{0\}, rhs_contracting_dims=\{0\}"  # x^T dy, as jnp.dot's VJP gives
    hlo_ref = jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.sin(a @ b)), argnums=(0, 1))).lower(x, w).compile().as_text()
    if not re.search(transposed, hlo_ref):
        pytest.skip("this XLA already lays out jnp.dot's weight gradient as a plain dot")
    assert not re.search(transposed, hlo)
