"""Building blocks shared by the model families, each parameter annotated with logical axis names.

Logical names: vocab, embed, heads, kv, mlp, relpos_buckets, layers (params) and batch, length (activations).
A rules table (training/mesh.py) maps them to mesh axes; model code never names a mesh axis.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from t5pegasus.attention import dot_product_attention

Initializer = Callable[..., Array]


def dtype_of(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def normal(stddev: float) -> Initializer:
    return nn.initializers.normal(stddev=stddev)


def constrain(x: Array, names: tuple[str | None, ...]) -> Array:
    """Sharding hint for an activation at a block edge (a no-op without a mesh and rules)."""
    return nn.with_logical_constraint(x, names)


class RMSNorm(nn.Module):
    """T5 layer norm: x / sqrt(mean(x^2) + eps) * scale; no mean-centring, no bias; computed in float32."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)


class Embed(nn.Module):
    """Token embedding table [vocab, embed]; `attend` gives the tied output projection."""

    num_embeddings: int
    features: int
    stddev: float = 1.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(normal(self.stddev), ("vocab", "embed")),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, ids: Array) -> Array:
        # Gather rows from a table whole along embed (FSDP gathers it as it does every weight before use), so
        # the looked-up activations can be laid out by batch without an all-to-all.
        table = nn.with_logical_constraint(self.embedding, ("vocab", None))
        return constrain(jnp.take(table, ids, axis=0).astype(self.dtype), ("batch", "length", "embed"))

    def attend(self, x: Array) -> Array:
        """x @ embedding^T: logits over the vocabulary, accumulated in float32."""
        return jnp.einsum("...d,vd->...v", x, self.embedding.astype(self.dtype), preferred_element_type=jnp.float32)


class Dense(nn.Module):
    """y = x W over the last axis, W shaped [in, *features] with logical axis names `axes`."""

    features: tuple[int, ...]
    axes: tuple[str, ...]
    stddev: float
    in_axes: int = 1
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_shape = x.shape[-self.in_axes:]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(normal(self.stddev), self.axes),
            (*in_shape, *self.features),
            self.param_dtype,
        )
        n_in = len(in_shape)
        x_letters = "abcd"[:n_in]
        out_letters = "wxyz"[: len(self.features)]
        eq = f"...{x_letters},{x_letters}{out_letters}->...{out_letters}"
        y = jnp.einsum(eq, x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.axes[n_in:]),
                self.features,
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu-erf": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
}


class GatedMLP(nn.Module):
    """T5 feed-forward: wo(act(x wi)) or, gated, wo(act(x wi_0) * (x wi_1))."""

    d_ff: int
    activation: str
    gated: bool
    dropout_rate: float = 0.0
    stddev_in: float = 1.0
    stddev_out: float = 1.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        act = ACTIVATIONS[self.activation]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.gated:
            h = act(Dense((self.d_ff,), ("embed", "mlp"), self.stddev_in, name="wi_0", **kw)(x))
            h = h * Dense((self.d_ff,), ("embed", "mlp"), self.stddev_in, name="wi_1", **kw)(x)
        else:
            h = act(Dense((self.d_ff,), ("embed", "mlp"), self.stddev_in, name="wi", **kw)(x))
        h = constrain(h, ("batch", "length", "mlp"))
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return Dense((x.shape[-1],), ("mlp", "embed"), self.stddev_out, name="wo", **kw)(h)


class RelativePositionBias(nn.Module):
    """T5 relative position bias [1, heads, q, k] from a learned [buckets, heads] table."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool
    stddev: float = 1.0
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, q_len: int, k_len: int, q_offset: Array | int = 0) -> Array:
        from t5pegasus.attention import relative_position_bucket, relative_positions

        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(normal(self.stddev), ("relpos_buckets", "heads")),
            (self.num_buckets, self.num_heads),
            self.param_dtype,
        )
        buckets = relative_position_bucket(
            relative_positions(q_len, k_len, q_offset), self.bidirectional, self.num_buckets, self.max_distance
        )
        bias = jnp.take(table, buckets, axis=0)  # [q, k, h]
        return jnp.transpose(bias, (2, 0, 1))[None].astype(jnp.float32)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with [embed, heads, kv] projections and an optional KV cache.

    With `decode=True` the keys/values of self-attention are appended to a cache ("cache" collection) at
    `cache_index`; cross-attention caches the projected memory once. `scale` multiplies q.k (T5 uses 1.0).
    """

    num_heads: int
    head_dim: int
    scale: float | None = None
    use_bias: bool = False
    dropout_rate: float = 0.0
    q_stddev: float = 1.0
    kv_stddev: float = 1.0
    o_stddev: float = 1.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _proj(self, name: str, stddev: float) -> Dense:
        return Dense((self.num_heads, self.head_dim), ("embed", "heads", "kv"), stddev, use_bias=self.use_bias,
                     dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    @nn.compact
    def __call__(
        self,
        x: Array,
        memory: Array | None = None,
        bias: Array | None = None,
        mask: Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> Array:
        is_cross = memory is not None
        q = self._proj("query", self.q_stddev)(x)
        if is_cross and decode:
            # Project the memory once, on the first call (cache initialisation), then reuse it.
            k_var = self.variable("cache", "cross_key", lambda: self._proj("key", self.kv_stddev)(memory))
            v_var = self.variable("cache", "cross_value", lambda: self._proj("value", self.kv_stddev)(memory))
            k, v = k_var.value, v_var.value
        else:
            source = memory if is_cross else x
            k = self._proj("key", self.kv_stddev)(source)
            v = self._proj("value", self.kv_stddev)(source)
        if decode and not is_cross:
            k, v = self._update_cache(k, v)
        q = constrain(q, ("batch", "length", "heads", "kv"))
        k = constrain(k, ("batch", "length", "heads", "kv"))
        v = constrain(v, ("batch", "length", "heads", "kv"))
        out = dot_product_attention(q, k, v, bias=bias, mask=mask, scale=self.scale)
        out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
        return Dense((x.shape[-1],), ("heads", "kv", "embed"), self.o_stddev, in_axes=2, use_bias=self.use_bias,
                     dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)

    def _update_cache(self, k: Array, v: Array) -> tuple[Array, Array]:
        """Write this step's keys/values at the cache index and return the whole cache."""
        initialised = self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialised:
            return k, v
        start = (0, index.value, 0, 0)
        cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype), start)
        cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype), start)
        index.value = index.value + k.shape[1]
        return cached_k.value, cached_v.value


def count_params(tree: object) -> int:
    """Number of scalars in a (possibly abstract) parameter tree."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def stack_layers(tree: Any) -> Any:
    """Unscanned -> scanned layout: every dict's `layers_0..layers_{n-1}` become one `layers` subtree whose
    leaves gain a leading axis of size n (the layout `nn.scan` over layers uses)."""
    if not isinstance(tree, dict):
        return tree
    names = sorted((k for k in tree if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
    out = {k: stack_layers(v) for k, v in tree.items() if k not in names}
    if names:
        layers = [stack_layers(tree[k]) for k in names]
        out["layers"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    return out


def unstack_layers(tree: Any) -> Any:
    """Scanned -> unscanned layout (inverse of `stack_layers`)."""
    if not isinstance(tree, dict):
        return tree
    out = {k: unstack_layers(v) for k, v in tree.items() if k != "layers"}
    if "layers" in tree:
        n = jax.tree_util.tree_leaves(tree["layers"])[0].shape[0]
        for i in range(n):
            out[f"layers_{i}"] = unstack_layers(jax.tree_util.tree_map(lambda x, i=i: x[i], tree["layers"]))
    return out


class LayerNorm(nn.Module):
    """BERT/GPT layer norm: (x - mean) / sqrt(var + eps) * scale + bias, computed in float32."""

    epsilon: float = 1e-12
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _params(self, features: int) -> tuple[Array, Array]:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (features,),
                           self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (features,),
                          self.param_dtype)
        return scale.astype(jnp.float32), bias.astype(jnp.float32)

    def _normalise(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        return (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale, bias = self._params(x.shape[-1])
        return (self._normalise(x) * scale + bias).astype(self.dtype)


class ConditionalLayerNorm(LayerNorm):
    """Layer norm whose scale and bias are shifted by linear projections of a condition vector.

    scale = scale_0 + c W_s, bias = bias_0 + c W_b with W_s, W_b initialised to zero, so a freshly
    conditioned model computes exactly what the unconditioned one does (conditional text generation,
    e.g. CVAE-style or class-conditioned UniLM). `condition` is [batch, c] (broadcast over the length axes)
    or shaped like x up to its last axis.
    """

    @nn.compact
    def __call__(self, x: Array, condition: Array) -> Array:  # type: ignore[override]
        features = x.shape[-1]
        scale, bias = self._params(features)
        c = condition.astype(jnp.float32)
        while c.ndim < x.ndim:
            c = c[:, None]
        shifts = []
        for name in ("condition_scale", "condition_bias"):
            kernel = self.param(name, nn.with_logical_partitioning(nn.initializers.zeros, (None, "embed")),
                                (c.shape[-1], features), self.param_dtype)
            shifts.append(jnp.einsum("...c,cd->...d", c, kernel.astype(jnp.float32)))
        return (self._normalise(x) * (scale + shifts[0]) + bias + shifts[1]).astype(self.dtype)


class PositionEmbed(nn.Module):
    """A small learned table [rows, embed] looked up by index (positions, segment/token types).

    Its row axis has no logical name (replicated): it is small and indexed by position, not by vocabulary.
    """

    num_embeddings: int
    features: int
    stddev: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, index: Array) -> Array:
        table = self.param("embedding", nn.with_logical_partitioning(normal(self.stddev), (None, "embed")),
                           (self.num_embeddings, self.features), self.param_dtype)
        return jnp.take(table, index, axis=0).astype(self.dtype)


class MLP(nn.Module):
    """BERT/GPT feed-forward with biases: wo(act(x wi + b_i)) + b_o."""

    d_ff: int
    activation: str
    stddev: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
        h = ACTIVATIONS[self.activation](Dense((self.d_ff,), ("embed", "mlp"), self.stddev, name="wi", **kw)(x))
        h = constrain(h, ("batch", "length", "mlp"))
        return Dense((x.shape[-1],), ("mlp", "embed"), self.stddev, name="wo", **kw)(h)


def run_layers(parent: nn.Module, layer_cls: type[nn.Module], n: int, x: Array, args: tuple,
               **layer_kwargs: Any) -> Array:
    """Apply n layers `layer_cls(parent.cfg, ...)`, unrolled (params `layers_i`) or, when the config says
    `scan_layers`, with nn.scan (params and cache stacked under `layers`); `remat` recomputes activations.

    The layer returns `(x, None)` when built with `scanned=True` (the scan carry), else `x`.
    """
    cfg = parent.cfg  # type: ignore[attr-defined]
    cls = nn.remat(layer_cls, prevent_cse=not cfg.scan_layers) if cfg.remat else layer_cls
    if cfg.scan_layers:
        scanned = nn.scan(
            cls,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * len(args),
            length=n,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = scanned(cfg, scanned=True, name="layers", **layer_kwargs)(x, *args)
        return x
    for i in range(n):
        x = cls(cfg, name=f"layers_{i}", **layer_kwargs)(x, *args)
    return x


class DecodeState(nn.Module):
    """Per-sequence bookkeeping of a KV cache, shared by all layers ("cache" collection).

    Holds the next absolute `position`, which cache slots hold real tokens (`key_valid` [b, max_len]) and each
    slot's running count of target-segment tokens (`key_count`, the UniLM c = cumsum(segment_ids)), so a
    cached step can rebuild the causal or UniLM mask exactly. The first call (cache initialisation, with a
    dummy input as long as the cache) only creates the variables.
    """

    @nn.compact
    def __call__(self, valid: Array, segment_ids: Array) -> tuple[Array | int, Array, Array, Array]:
        """(offset, key_valid [b, k], key_count [b, k], query_count [b, q]) for this chunk of tokens."""
        batch, length = valid.shape
        initialised = self.has_variable("cache", "position")
        position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
        key_valid = self.variable("cache", "key_valid", jnp.zeros, (batch, length), jnp.bool_)
        key_count = self.variable("cache", "key_count", jnp.zeros, (batch, length), jnp.int32)
        last = self.variable("cache", "last_count", jnp.zeros, (batch,), jnp.int32)
        counts = last.value[:, None] + jnp.cumsum(segment_ids.astype(jnp.int32), axis=1)
        if not initialised:
            return 0, valid.astype(bool), counts, counts
        offset = position.value
        key_valid.value = jax.lax.dynamic_update_slice(key_valid.value, valid.astype(bool), (0, offset))
        key_count.value = jax.lax.dynamic_update_slice(key_count.value, counts, (0, offset))
        last.value = counts[:, -1]
        position.value = offset + length
        return offset, key_valid.value, key_count.value, counts
