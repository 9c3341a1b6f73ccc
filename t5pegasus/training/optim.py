"""The optax chain: clipping (global norm, or soft g*c/(||g||+c)), then AdamW (decay on all but norms and
biases) or Adafactor, driven by a learning-rate schedule."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from t5pegasus.training.runconfig import OptimConfig
from t5pegasus.training.schedules import make_schedule

NO_DECAY_NAMES = ("scale", "bias")


def decay_mask(params: Any) -> Any:
    """True for weights that get weight decay: everything but norm scales and biases (and 1-d vectors)."""

    def keep(path: tuple, leaf: Any) -> bool:
        name = getattr(path[-1], "key", getattr(path[-1], "name", str(path[-1])))
        return name not in NO_DECAY_NAMES and jnp.ndim(leaf) > 1

    return jax.tree_util.tree_map_with_path(keep, params)


class SoftClipState(NamedTuple):
    pass


def clip_by_global_norm_soft(max_norm: float) -> optax.GradientTransformation:
    """Soft clipping: g * c / (||g|| + c) (always shrinks a little; smooth in ||g||)."""

    def init(params: Any) -> SoftClipState:
        del params
        return SoftClipState()

    def update(updates: Any, state: SoftClipState, params: Any = None) -> tuple[Any, SoftClipState]:
        del params
        factor = max_norm / (optax.global_norm(updates) + max_norm)
        return jax.tree.map(lambda g: (g * factor).astype(g.dtype), updates), state

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimConfig, total_steps: int = 0) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax chain, learning-rate schedule) for `cfg`; `total_steps` is the default end of a cosine decay."""
    schedule = make_schedule(cfg.schedule, cfg.learning_rate, points=cfg.points, warmup_steps=cfg.warmup_steps,
                             total_steps=cfg.total_steps or total_steps, final_fraction=cfg.final_fraction)
    parts: list[optax.GradientTransformation] = []
    if cfg.clip > 0 and cfg.clip_kind == "global":
        parts.append(optax.clip_by_global_norm(cfg.clip))
    elif cfg.clip > 0 and cfg.clip_kind == "soft":
        parts.append(clip_by_global_norm_soft(cfg.clip))
    if cfg.name == "adamw":
        parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 mask=decay_mask))
    else:
        # T5's Adafactor: factored second moments, update clipping at 1, relative step scaled by the parameter.
        parts.append(optax.adafactor(schedule, decay_rate=0.8, clipping_threshold=1.0,
                                     weight_decay_rate=cfg.weight_decay or None, weight_decay_mask=decay_mask))
    return optax.chain(*parts), schedule
