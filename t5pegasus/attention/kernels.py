"""Fused softmax-attention backends and the rule that picks one.

Every backend computes softmax(scale * q k^T + bias, masked by `mask` and `is_causal`) v over
[batch, length, heads, head_dim] tensors. They differ in what they accept:

| backend | where        | bias              | boolean mask         | notes                            |
|---------|--------------|-------------------|----------------------|----------------------------------|
| einsum  | everywhere   | any broadcastable | any broadcastable    | reference (dot_product.py)       |
| xla     | everywhere   | 4-D broadcastable | 4-D broadcastable    | jax.nn.dot_product_attention     |
| cudnn   | GPU          | yes (full q x k)  | folded into the bias | bf16/fp16, head_dim % 8, <= 128  |
| flash   | TPU (Pallas) | yes (materialised)| folded into the bias | lengths % 128                    |
| splash  | TPU (Pallas) | no                | no (only is_causal)  | lengths % 128                    |

`resolve_backend` turns a request ("auto" or a name) into the backend that will really run: "auto" is the
fastest one that can take the arguments on this platform; a named backend that cannot take them (wrong
platform, dtype, shape, or an arbitrary bias/mask for splash) falls back to the next one that can, ending at
"einsum", which takes everything. The choice is made at trace time from static shapes and dtypes only.

Under a mesh of more than one device the Pallas kernels (which have no partitioning rule of their own) run per
shard through `jax.shard_map` (`per_shard`): batch rows split over the mesh axes the logical "batch" axis maps
to, heads over those "heads" maps to (the flax logical-axis rules in effect, as the models shard their
activations); an axis whose size does not divide stays whole. Attention is independent per (example, head), so
every shard computes exactly its part. cuDNN's call has partitioning rules in JAX and is left to them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from t5pegasus.attention.masks import mask_value
from t5pegasus.config import SOFTMAX_BACKENDS as BACKENDS

# What each backend falls back to when it cannot take the call.
_FALLBACK = {"splash": "flash", "flash": "einsum", "cudnn": "xla", "xla": "einsum"}
# "auto" tries these in order on each platform.
_PREFERENCE = {"gpu": ("cudnn", "xla"), "tpu": ("splash", "flash", "einsum")}
_TPU_BLOCK = 128


@dataclass(frozen=True)
class Call:
    """The static facts about one attention call that decide which backends can run it."""

    platform: str  # "cpu", "gpu" or "tpu"
    dtype: jnp.dtype
    q_len: int
    k_len: int
    head_dim: int
    has_bias: bool
    has_mask: bool
    training: bool = True  # cuDNN needs even lengths when a bias gets a gradient


def supports(backend: str, call: Call) -> bool:
    """Whether `backend` can compute `call` exactly (up to dtype rounding)."""
    if backend in ("einsum", "xla"):
        return True
    if backend == "cudnn":
        even = call.q_len % 2 == 0 and call.k_len % 2 == 0
        return (
            call.platform == "gpu"
            and jnp.dtype(call.dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
            and call.head_dim % 8 == 0
            and call.head_dim <= 128
            and (even or not (call.training and (call.has_bias or call.has_mask)))
        )
    tiled = call.q_len % _TPU_BLOCK == 0 and call.k_len % _TPU_BLOCK == 0
    if backend == "flash":
        return call.platform == "tpu" and tiled
    if backend == "splash":
        return call.platform == "tpu" and tiled and not (call.has_bias or call.has_mask)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {('auto',) + BACKENDS}")


def resolve_backend(requested: str, call: Call) -> str:
    """The backend that will run `call`: the first of the request's fallback chain that supports it."""
    if requested == "auto":
        for name in _PREFERENCE.get(call.platform, ("einsum",)):
            if supports(name, call):
                return name
        return "einsum"
    name = requested
    while not supports(name, call):
        name = _FALLBACK[name]
    return name


def _bias_with_mask(bias: Array | None, mask: Array | None, shape: tuple[int, ...], dtype) -> Array:
    """One additive [b, h, q, k] bias holding `bias` and a finite large negative where `mask` is False."""
    total = jnp.zeros(shape, dtype) if bias is None else jnp.broadcast_to(bias.astype(dtype), shape)
    if mask is not None:
        total = jnp.where(jnp.broadcast_to(mask, shape), total, mask_value(dtype))
    return total


def _as_4d(x: Array) -> Array:
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def xla_attention(q, k, v, bias=None, mask=None, scale=None, is_causal=False) -> Array:
    """jax.nn.dot_product_attention(implementation="xla"); bias/mask are made 4-D."""
    bias = None if bias is None else _as_4d(jnp.asarray(bias))
    mask = None if mask is None else _as_4d(jnp.asarray(mask, bool))
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=scale, is_causal=is_causal, implementation="xla"
    )


def cudnn_attention(q, k, v, bias=None, mask=None, scale=None, is_causal=False) -> Array:
    """cuDNN flash attention. cuDNN needs bias/mask with full (q, k) trailing dims, so both are broadcast
    there; JAX folds the boolean mask into the bias with cuDNN's own large negative (its workaround for a
    cuDNN bug with two very large negatives), so our finfo-based mask_value is not used on this path."""
    t, s = q.shape[1], k.shape[1]

    def full(x: Array) -> Array:
        x = _as_4d(x)
        return jnp.broadcast_to(x, x.shape[:2] + (t, s))

    bias = None if bias is None else full(jnp.asarray(bias)).astype(q.dtype)
    mask = None if mask is None else full(jnp.asarray(mask, bool))
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=scale, is_causal=is_causal, implementation="cudnn"
    )


def flash_attention(q, k, v, bias=None, mask=None, scale=None, is_causal=False) -> Array:
    """Pallas TPU flash attention. The kernel computes (q k^T + ab) * sm_scale, so q is pre-scaled and
    sm_scale is 1 to keep the bias unscaled; a boolean mask is folded into the (materialised) bias."""
    from jax.experimental.pallas.ops.tpu.flash_attention import flash_attention as kernel

    b, t, h, d = q.shape
    scale = d**-0.5 if scale is None else scale
    ab = None
    if bias is not None or mask is not None:
        ab = _bias_with_mask(bias, mask, (b, h, t, k.shape[1]), jnp.float32)
    qt, kt, vt = (x.transpose(0, 2, 1, 3) for x in (q * jnp.asarray(scale, q.dtype), k, v))
    out = kernel(qt, kt, vt, ab, causal=is_causal, sm_scale=1.0)
    return out.transpose(0, 2, 1, 3).astype(q.dtype)


def splash_attention(q, k, v, bias=None, mask=None, scale=None, is_causal=False, interpret=False) -> Array:
    """Pallas TPU splash attention with a static full or causal mask (it takes no bias or dense mask)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    if bias is not None or mask is not None:
        raise ValueError("splash attention takes no bias or dense mask; use backend='flash' or 'einsum'")
    b, t, h, d = q.shape
    s = k.shape[1]
    scale = d**-0.5 if scale is None else scale
    head_mask = sa.CausalMask((t, s)) if is_causal else sa.FullMask((t, s))
    kernel = sa.make_splash_mha(sa.MultiHeadMask([head_mask] * h), head_shards=1, q_seq_shards=1, interpret=interpret)
    qt, kt, vt = (x.transpose(0, 2, 1, 3) for x in (q * jnp.asarray(scale, q.dtype), k, v))
    out = jax.vmap(kernel)(qt, kt, vt)
    return out.transpose(0, 2, 1, 3).astype(q.dtype)


FUSED = {"xla": xla_attention, "cudnn": cudnn_attention, "flash": flash_attention, "splash": splash_attention}
PER_SHARD = ("flash", "splash")  # run through `per_shard` under a multi-device mesh


def _spec_axes(logical: str, size: int, mesh: Any) -> tuple[str, ...] | None:
    """The mesh axes the logical axis `logical` maps to under the active flax rules, if they divide `size`."""
    import flax.linen as nn

    spec = nn.logical_to_mesh_axes((logical,))
    axes = None if spec is None else spec[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if a in mesh.shape)
    ways = 1
    for a in axes:
        ways *= mesh.shape[a]
    return axes if axes and size > 1 and size % ways == 0 else None


def per_shard(fn: Callable[..., Array], mesh: Any, q: Array, k: Array, v: Array, bias: Array | None = None,
              mask: Array | None = None, **kwargs: Any) -> Array:
    """`fn(q, k, v, bias=, mask=, **kwargs)` run on each device's block through `jax.shard_map`: q/k/v split on
    batch and heads, a 4-D bias / mask on the same axes where they are not broadcast (size 1)."""
    from jax.sharding import PartitionSpec as P

    batch = _spec_axes("batch", q.shape[0], mesh)
    heads = _spec_axes("heads", q.shape[2], mesh)

    def spec4(x: Array) -> Any:  # [b, h, q, k] bias or mask
        return P(batch if x.shape[0] > 1 else None, heads if x.shape[1] > 1 else None, None, None)

    qkv = P(batch, None, heads, None)
    bias = None if bias is None else _as_4d(jnp.asarray(bias))
    mask = None if mask is None else _as_4d(jnp.asarray(mask, bool))
    extra = [x for x in (bias, mask) if x is not None]

    def body(q: Array, k: Array, v: Array, *rest: Array) -> Array:
        it = iter(rest)
        return fn(q, k, v, bias=None if bias is None else next(it), mask=None if mask is None else next(it),
                  **kwargs)

    sharded = jax.shard_map(body, mesh=mesh, in_specs=(qkv, qkv, qkv, *(spec4(x) for x in extra)), out_specs=qkv,
                            check_vma=False)
    return sharded(q, k, v, *extra)
