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

from t5pegasus import attention as attn
from t5pegasus.attention import dot_product_attention, kernels
from t5pegasus.config import AttentionConfig
from t5pegasus.errors import UserError
from t5pegasus.models.matmul import matmul

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
        lead = x.shape[:-1]
        logits = matmul(x.reshape(-1, x.shape[-1]), self.embedding.astype(self.dtype).T,
                        jnp.float32)  # one 2-d matmul (see Dense)
        return logits.reshape(*lead, self.num_embeddings)


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
        lead = x.shape[: x.ndim - n_in]
        # One 2-d matmul [tokens, in] x [in, out]: its backward (x^T dy) then contracts one axis, which the CPU
        # dot kernels take without relayout copies (contracting batch and length together forces them).
        rows = math.prod(lead)
        y = matmul(x.astype(self.dtype).reshape(rows, math.prod(in_shape)),
                   kernel.astype(self.dtype).reshape(math.prod(in_shape), math.prod(self.features)))
        y = y.reshape(*lead, *self.features)
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
    def __call__(self, q_len: int, k_len: int, q_offset: Array | int = 0, *, q_positions: Array | None = None,
                 k_positions: Array | None = None) -> Array:
        """The bias of `q_len` queries from `q_offset` against `k_len` keys from 0 ([1, h, q, k]); or, given
        per-row `q_positions` [b, q] and `k_positions` [b, k] (packed examples, each from 0), [b, h, q, k]."""
        from t5pegasus.attention import relative_position_bucket, relative_positions, relative_positions_of

        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(normal(self.stddev), ("relpos_buckets", "heads")),
            (self.num_buckets, self.num_heads),
            self.param_dtype,
        )
        if q_positions is None or k_positions is None:
            relative = relative_positions(q_len, k_len, q_offset)[None]
        else:
            relative = relative_positions_of(q_positions, k_positions)
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        bias = jnp.take(table, buckets, axis=0)  # [b or 1, q, k, h]
        return jnp.transpose(bias, (0, 3, 1, 2)).astype(jnp.float32)


def performer_projection(module: nn.Module, options: AttentionConfig, head_dim: int,
                         deterministic: bool) -> Array:
    """FAVOR+ random features: redrawn from the "features" rng stream in training when the caller supplies
    one (and `performer_redraw`), else fixed ones from jax.random.key(0), the same for every layer and call
    (evaluation and decoding are then deterministic functions of the parameters)."""
    redraw = options.performer_redraw and not deterministic and module.has_rng("features")
    key = module.make_rng("features") if redraw else jax.random.key(0)
    return attn.orthogonal_random_features(key, options.performer_features, head_dim)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with [embed, heads, kv] projections and an optional KV cache.

    With `decode=True` the keys/values of self-attention are appended to a cache ("cache" collection) at
    `cache_index`; cross-attention caches the projected memory once. `scale` multiplies q.k (T5 uses 1.0).
    `options` (the model's `AttentionConfig`) picks the kernel and the rotary positions; `symmetric` makes
    ReRoPE clip negative distances too (bidirectional attention). Keyword-only inputs: `positions` ([b or 1, q]
    absolute positions of the queries, for RoPE/ReRoPE), `key_valid` ([b, k] non-padding keys, for the
    linear kinds, which take no dense mask), `causal` (future keys are hidden too, on top of `mask`: the linear
    kinds' flag, the fused softmax kernels' `is_causal`; with `decode=True` the caller's cached mask says it),
    `segment_ids` ([b, q] segment ids of the
    queries: the UniLM seq2seq mask for linear/performer; with `decode=True` the queries are placed at the
    cache index, so a cached chunk attends to the cache with the UniLM visibility) and `prev_scores`
    (RealFormer: given, the call returns `(out, scores)` with this layer's pre-softmax scores for the next one).
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
    options: AttentionConfig = AttentionConfig()
    symmetric: bool = False

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
        *,
        positions: Array | None = None,
        key_valid: Array | None = None,
        causal: bool = False,
        segment_ids: Array | None = None,
        prev_scores: Array | None = None,
    ) -> Array | tuple[Array, Array]:
        is_cross = memory is not None
        opts = self.options
        rotary = "none" if is_cross else opts.rotary
        q = self._proj("query", self.q_stddev)(x)
        if is_cross and decode and opts.kind == "softmax" and prev_scores is None:
            out = self._attend_memory(q, memory, bias, mask)
            return self._output(out, x.shape[-1], deterministic)
        if is_cross and decode:
            # Project the memory once, on the first call (cache initialisation), then reuse it.
            k_var = self.variable("cache", "cross_key", lambda: self._proj("key", self.kv_stddev)(memory))
            v_var = self.variable("cache", "cross_value", lambda: self._proj("value", self.kv_stddev)(memory))
            k, v = k_var.value, v_var.value
            if k.shape[0] != q.shape[0]:  # one memory row per example, `copies` query rows: repeat it here
                copies = q.shape[0] // k.shape[0]
                k, v = jnp.repeat(k, copies, axis=0), jnp.repeat(v, copies, axis=0)
                mask = mask if mask is None or mask.shape[0] == 1 else jnp.repeat(mask, copies, axis=0)
                key_valid = None if key_valid is None else jnp.repeat(key_valid, copies, axis=0)
        else:
            source = memory if is_cross else x
            k = self._proj("key", self.kv_stddev)(source)
            v = self._proj("value", self.kv_stddev)(source)
        if rotary != "none" and positions is None:
            positions = jnp.arange(x.shape[1])[None, :]
        if rotary == "rope":  # rotate before the cache write: cached keys keep their own positions
            q = attn.apply_rope(q, positions, opts.rope_layout, opts.rope_base)
            k = attn.apply_rope(k, positions, opts.rope_layout, opts.rope_base)
        key_positions = positions
        query_offset = None  # where the queries sit among the keys: the cache index (None: keys are the queries)
        if decode and not is_cross and prev_scores is None and self._cache_in_memory_layout(q.dtype):
            k_mem, v_mem, _, _ = self._update_cache(k, v, memory_layout=True)
            out = attn.memory_attention(q, k_mem, v_mem, bias=bias, mask=mask, scale=self.scale)
            return self._output(out, x.shape[-1], deterministic)
        if decode and not is_cross:
            k, v, key_positions, query_offset = self._update_cache(k, v, positions if opts.rerope else None)
        q = constrain(q, ("batch", "length", "heads", "kv"))
        k = constrain(k, ("batch", "length", "heads", "kv"))
        v = constrain(v, ("batch", "length", "heads", "kv"))
        # `causal` (a training call over a whole sequence) adds the causal mask to `mask`: the plain softmax path
        # hands it to the kernel as `is_causal` (the fused kernels then skip the blocks above the diagonal, and
        # splash runs when nothing else is masked); the other paths build it into the mask.
        plain_causal = causal and not decode and not is_cross
        scored = rotary in ("rerope", "leaky_rerope") or prev_scores is not None  # paths that build their scores
        if plain_causal and opts.kind == "softmax" and scored:
            mask = attn.combine(mask, attn.causal_mask(q.shape[1], k.shape[1]))
        if opts.kind != "softmax":
            out = self._efficient(q, k, v, key_valid, causal, is_cross, deterministic, segment_ids, query_offset)
            scores = None
        elif rotary in ("rerope", "leaky_rerope"):
            out, scores = self._rerope(q, k, v, bias, mask, positions, key_positions, prev_scores)
        elif prev_scores is not None:
            out, scores = attn.residual_attention(q, k, v, prev_scores, bias=bias, mask=mask, scale=self.scale)
        else:
            out = dot_product_attention(q, k, v, bias=bias, mask=mask, scale=self.scale, is_causal=plain_causal,
                                        backend=opts.backend)
            scores = None
        out = self._output(out, x.shape[-1], deterministic)
        return out if prev_scores is None else (out, scores)

    def _output(self, out: Array, features: int, deterministic: bool) -> Array:
        out = nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)
        return Dense((features,), ("heads", "kv", "embed"), self.o_stddev, in_axes=2, use_bias=self.use_bias,
                     dtype=self.dtype, param_dtype=self.param_dtype, name="out")(out)

    def _attend_memory(self, q: Array, memory: Array, bias: Array | None, mask: Array | None) -> Array:
        """Cached softmax cross-attention: the memory is projected once (on the call that creates the cache)
        into `memory_layout`, with one row per example however many copies of it (beams, samples) the
        queries have; `bias` and `mask` are per example too (see attention.memory_attention)."""
        def project() -> tuple[Array, Array]:
            return attn.memory_layout(self._proj("key", self.kv_stddev)(memory),
                                      self._proj("value", self.kv_stddev)(memory))

        k_mem, v_mem = self.variable("cache", "cross_memory", project).value
        return attn.memory_attention(q, k_mem, v_mem, bias=bias, mask=mask, scale=self.scale)

    def _rerope(self, q: Array, k: Array, v: Array, bias: Array | None, mask: Array | None, positions: Array,
                key_positions: Array, prev_scores: Array | None) -> tuple[Array, Array]:
        """(Leaky) ReRoPE on un-rotated q, k: the cached one-query step when q is one position against stored
        key positions, else the prefill scores; plus bias and RealFormer's previous scores when given."""
        o = self.options
        common = dict(window=o.rerope_window, leaky=o.leak, scale=self.scale, layout=o.rope_layout,
                      base=o.rope_base, symmetric=self.symmetric)
        if q.shape[1] == 1:
            position = jnp.broadcast_to(positions, (positions.shape[0], 1))[:, 0]
            scores = attn.rerope_decode_scores(q, k, position, key_positions=key_positions, **common)
        else:
            scores = attn.rerope_scores(q, k, q_positions=positions, k_positions=key_positions, **common)
        if bias is not None:
            scores = scores + bias.astype(scores.dtype)
        if prev_scores is not None:
            scores = scores + prev_scores.astype(scores.dtype)
        return attn.attention_from_scores(scores, v, None, mask, dtype=q.dtype), scores

    def _efficient(self, q: Array, k: Array, v: Array, key_valid: Array | None, causal: bool, is_cross: bool,
                   deterministic: bool, segment_ids: Array | None = None,
                   query_offset: Array | None = None) -> Array:
        """The linear kinds: no score matrix, so padding comes as `key_valid`, causality as a flag and the UniLM
        mask as the queries' `segment_ids` (then `causal` is ignored); `query_offset` is the cache index of a
        cached chunk (UniLM only: a causal linear model does not decode with a cache)."""
        o = self.options
        if query_offset is not None and segment_ids is None:
            raise ValueError(f"cached decoding with attention kind {o.kind!r} needs segment_ids (the UniLM mask); "
                             "causal and bidirectional linear attention do not decode with a cache")
        unilm = dict(segment_ids=segment_ids, query_offset=query_offset) if segment_ids is not None else {}
        causal = causal and segment_ids is None
        if o.kind == "linear":
            return attn.linear_attention(q, k, v, causal=causal, key_valid=key_valid, **unilm)
        if o.kind == "performer":
            projection = performer_projection(self, o, self.head_dim, deterministic)
            return attn.performer_attention(q, k, v, projection, causal=causal, key_valid=key_valid,
                                            scale=self.scale, **unilm)
        if o.kind == "nystrom":
            if causal or segment_ids is not None:
                raise ValueError("nystrom attention has no causal (or UniLM) form")
            landmarks = min(o.nystrom_landmarks, q.shape[1], k.shape[1])
            return attn.nystrom_attention(q, k, v, landmarks, key_valid=key_valid, scale=self.scale,
                                          pinv_iterations=o.nystrom_pinv_iterations,
                                          query_valid=None if is_cross else key_valid)
        raise ValueError(f"unknown attention kind {o.kind!r}")

    def _cache_in_memory_layout(self, dtype: jnp.dtype) -> bool:
        """Whether the self-attention cache is kept in `attention.memory_layout`: for softmax attention (no
        ReRoPE) where a one-token cached step runs the einsum path anyway (CPU, TPU), which would otherwise
        relay the whole cache out on every step. A fused kernel (GPU) reads the standard layout itself."""
        o = self.options
        if o.kind != "softmax" or o.rerope:
            return False
        call = kernels.Call(platform=jax.default_backend(), dtype=dtype, q_len=1, k_len=1, head_dim=self.head_dim,
                            has_bias=False, has_mask=True, training=False)
        return kernels.resolve_backend(o.backend, call) == "einsum"

    def _update_cache(self, k: Array, v: Array, positions: Array | None = None,
                      memory_layout: bool = False) -> tuple[Array, Array, Array | None, Array | None]:
        """Write this step's keys/values (and, for ReRoPE, their positions) at the cache index and return the
        whole cache and the index they were written at (None on the call that creates the cache). With
        `memory_layout` the cache (and what is returned) is in `attention.memory_layout`."""
        if memory_layout:
            k, v = attn.memory_layout(k, v)
        initialised = self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        cached_p = None
        if positions is not None:
            positions = jnp.broadcast_to(positions, k.shape[:2]).astype(jnp.int32)
            cached_p = self.variable("cache", "cached_position", jnp.zeros, k.shape[:2], jnp.int32)
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialised:
            return k, v, positions, None
        written_at = index.value
        start = (0, written_at, 0, 0)
        kv_start = (0, 0, 0, written_at) if memory_layout else start
        cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype), kv_start)
        cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype), kv_start)
        if cached_p is not None:
            cached_p.value = jax.lax.dynamic_update_slice(cached_p.value, positions, start[:2])
        index.value = index.value + k.shape[-1 if memory_layout else 1]
        return cached_k.value, cached_v.value, None if cached_p is None else cached_p.value, written_at


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
    # Set: index the hierarchical extension of the table (n -> n * n rows, exact below n) with this alpha.
    hierarchical_alpha: float | None = None

    @nn.compact
    def __call__(self, index: Array) -> Array:
        table = self.param("embedding", nn.with_logical_partitioning(normal(self.stddev), (None, "embed")),
                           (self.num_embeddings, self.features), self.param_dtype)
        if self.hierarchical_alpha is not None:
            return attn.hierarchical_rows(table, index, self.hierarchical_alpha).astype(self.dtype)
        return jnp.take(table, index, axis=0).astype(self.dtype)


def check_length(cfg: Any, length: int) -> None:
    """Refuse `length` positions from 0 past a BERT/GPT config's position table (`position_limit`): a lookup
    beyond the table would give NaN rows."""
    limit = cfg.position_limit
    if limit is not None and length > limit:
        longer = (f"; attention.position=hierarchical extends its {limit} to {limit * limit}"
                  if cfg.attention.position == "learned" else "")
        raise UserError(f"a sequence of {length} tokens is longer than the model's {limit} positions; shorten "
                        f"it{longer}")


def position_embeddings(cfg: Any, positions: Array, **kw: Any) -> Array | None:
    """A BERT/GPT config's absolute position embeddings at `positions` (learned or hierarchical table named
    `position_embeddings`), or None when positions are rotary or absent (no table is created then)."""
    if cfg.attention.position not in ("learned", "hierarchical"):
        return None
    alpha = cfg.attention.hierarchical_alpha if cfg.attention.position == "hierarchical" else None
    return PositionEmbed(cfg.max_position_embeddings, cfg.hidden_size, cfg.initializer_range,
                         hierarchical_alpha=alpha, name="position_embeddings", **kw)(positions)


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
               residual_scores: tuple[Array, ...] = (), **layer_kwargs: Any) -> Array:
    """Apply n layers `layer_cls(parent.cfg, ...)`, unrolled (params `layers_i`) or, when the config says
    `scan_layers`, with nn.scan (params and cache stacked under `layers`); `remat` recomputes activations.

    The carry is `x`, or `(x, *residual_scores)` for RealFormer (initial scores, zeros, which each layer
    replaces by its own); the layer returns `(carry, None)` when built with `scanned=True`, else the carry.
    Returns the final x.
    """
    cfg = parent.cfg  # type: ignore[attr-defined]
    cls = nn.remat(layer_cls, prevent_cse=not cfg.scan_layers) if cfg.remat else layer_cls
    carry: Any = (x, *residual_scores) if residual_scores else x
    if cfg.scan_layers:
        scanned = nn.scan(
            cls,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True, "features": True},
            in_axes=(nn.broadcast,) * len(args),
            length=n,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        carry, _ = scanned(cfg, scanned=True, name="layers", **layer_kwargs)(carry, *args)
    else:
        for i in range(n):
            carry = cls(cfg, name=f"layers_{i}", **layer_kwargs)(carry, *args)
    return carry[0] if residual_scores else carry


def split_carry(carry: Any) -> tuple[Array, tuple[Array, ...]]:
    """(x, RealFormer scores) of a layer's carry (no scores when it is a bare array)."""
    return (carry[0], tuple(carry[1:])) if isinstance(carry, tuple) else (carry, ())


def join_carry(x: Array, scores: tuple[Array, ...]) -> Any:
    return (x, *scores) if scores else x


def initial_scores(cfg: Any, batch: int, q_len: int, *k_lens: int) -> tuple[Array, ...]:
    """RealFormer's starting scores (zeros [b, h, q, k], one per attention stream) or () when it is off."""
    if not cfg.attention.realformer:
        return ()
    return tuple(jnp.zeros((batch, cfg.num_heads, q_len, k), jnp.float32) for k in k_lens)


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
