"""Learning-rate schedules: piecewise linear (T5 PEGASUS), warmup + inverse square root, warmup + cosine.

Each returns an `optax.Schedule`: step -> learning rate, usable inside jit.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import optax

from t5pegasus.errors import UserError

SCHEDULES = ("piecewise", "rsqrt", "cosine", "constant")


def piecewise_linear(points: Mapping[int, float], base: float = 1.0) -> optax.Schedule:
    """base * multiplier, where multipliers are given at `points` {step: multiplier}, linear between them,
    0 before the first (a ramp from step 0 when the first point is later) and held after the last.

    `{10000: 1}` is the T5 PEGASUS schedule: linear warmup over 10k steps, then constant.
    """
    if not points:
        raise UserError("a piecewise schedule needs at least one {step: multiplier} point")
    items = sorted((int(k), float(v)) for k, v in points.items())
    if items[0][0] < 0:
        raise UserError("piecewise schedule steps must be >= 0")
    if items[0][0] > 0:
        items = [(0, 0.0)] + items
    xs = jnp.asarray([s for s, _ in items], jnp.float32)
    ys = jnp.asarray([m for _, m in items], jnp.float32)

    def schedule(step):
        return base * jnp.interp(jnp.asarray(step, jnp.float32), xs, ys)

    return schedule


def warmup_rsqrt(base: float, warmup_steps: int) -> optax.Schedule:
    """Linear warmup to `base` over `warmup_steps`, then base * sqrt(warmup / step)."""
    w = float(max(1, warmup_steps))

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        return base * jnp.minimum(s / w, jnp.sqrt(w / jnp.maximum(s, w)))

    return schedule


def warmup_cosine(base: float, warmup_steps: int, total_steps: int, final_fraction: float = 0.0) -> optax.Schedule:
    """Linear warmup to `base`, then a half cosine down to `base * final_fraction` at `total_steps`."""
    if total_steps <= warmup_steps:
        raise UserError(f"cosine schedule: total steps {total_steps} must exceed warmup steps {warmup_steps}")
    return optax.warmup_cosine_decay_schedule(0.0, base, max(1, warmup_steps), total_steps, base * final_fraction)


def make_schedule(kind: str, base: float, *, points: Mapping[int, float] | None = None, warmup_steps: int = 0,
                  total_steps: int = 0, final_fraction: float = 0.0) -> optax.Schedule:
    """The schedule named `kind` (one of SCHEDULES)."""
    if kind == "piecewise":
        if not points:
            points = {warmup_steps: 1.0} if warmup_steps else {0: 1.0}
        return piecewise_linear(points, base)
    if kind == "rsqrt":
        return warmup_rsqrt(base, warmup_steps)
    if kind == "cosine":
        return warmup_cosine(base, warmup_steps, total_steps, final_fraction)
    if kind == "constant":
        return optax.constant_schedule(base)
    raise UserError(f"unknown schedule {kind!r}; choose one of: {', '.join(SCHEDULES)}")
