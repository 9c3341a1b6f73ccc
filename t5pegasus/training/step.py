"""The jitted train and eval steps (compute dtype, e.g. bfloat16, is the model config's `dtype`).

A train step: split the batch into `accumulate` micro-batches, sum their loss gradients (a `lax.scan`),
divide by the total token weight (so the update equals one batch `accumulate` times larger), apply the optax
chain and the EMA, and skip the whole update when the loss or gradient is not finite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import Array
from jax.sharding import NamedSharding

from t5pegasus.training.losses import TokenSums
from t5pegasus.training.objectives import Batch, Objective
from t5pegasus.training.state import TrainState, ema_params, ema_transform
from t5pegasus.xla_options import train_step_options

Metrics = dict[str, Array]


def _micro_batches(batch: Batch, k: int) -> Batch:
    """[B, ...] -> [k, B/k, ...] taking rows j, j+k, j+2k, ... for micro-batch j.

    Splitting the batch axis as (B/k, k) keeps each device's contiguous block of rows on that device, so no
    data moves between devices; the micro-batches together hold every row exactly once.
    """

    def split(x: Array) -> Array:
        b = x.shape[0]
        if b % k:
            raise ValueError(f"batch size {b} is not divisible by accumulate={k}")
        return jnp.swapaxes(x.reshape(b // k, k, *x.shape[1:]), 0, 1)

    return {name: split(x) for name, x in batch.items()}


def loss_and_grads(objective: Objective, params: Any, batch: Batch, rng: Array,
                   accumulate: int) -> tuple[TokenSums, Any]:
    """Summed token losses and the gradient of their sum, over `accumulate` micro-batches."""

    def sums(p: Any, mb: Batch, key: Array) -> tuple[Array, TokenSums]:
        s = objective.loss(p, mb, key, deterministic=False)
        return s.loss, s

    grad_fn = jax.grad(sums, has_aux=True)
    if accumulate == 1:
        grads, s = grad_fn(params, batch, rng)
        return s, grads

    def body(carry: tuple[Any, TokenSums], xs: tuple[Batch, Array]) -> tuple[tuple[Any, TokenSums], None]:
        acc_g, acc_s = carry
        g, s = grad_fn(params, xs[0], xs[1])
        return (jax.tree.map(jnp.add, acc_g, g), jax.tree.map(jnp.add, acc_s, s)), None

    zeros_g = jax.tree.map(jnp.zeros_like, params)
    zero = jnp.zeros((), jnp.float32)
    init = (zeros_g, TokenSums(zero, zero, zero, zero, zero))
    keys = jax.random.split(rng, accumulate)
    (grads, s), _ = jax.lax.scan(body, init, (_micro_batches(batch, accumulate), keys))
    return s, grads


def make_train_step(objective: Objective, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    accumulate: int = 1, ema_momentum: float = 0.0,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """state, batch -> (new state, metrics). Pure; jit it with `jit_train_step`."""
    ema_tx = ema_transform(ema_momentum) if ema_momentum > 0 else None

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(state.rng, state.step)
        sums, grad_sums = loss_and_grads(objective, state.params, batch, rng, accumulate)
        denom = jnp.maximum(sums.weight, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grad_sums)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(sums.loss) & jnp.isfinite(grad_norm)

        def apply(_: None) -> tuple[Any, Any, Any]:
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            ema = state.ema if ema_tx is None else ema_tx.update(params, state.ema)[1]
            return params, opt_state, ema

        def skip(_: None) -> tuple[Any, Any, Any]:
            return state.params, state.opt_state, state.ema

        # A branch, not a `where` over every weight and moment: a skipped step does no optimiser work, and a
        # non-finite gradient never reaches the moments.
        params, opt_state, ema = jax.lax.cond(finite, apply, skip, None)
        applied = state.step - state.skipped  # optimiser updates before this one
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema=ema,
            bad_in_a_row=jnp.where(finite, 0, state.bad_in_a_row + 1),
            skipped=state.skipped + jnp.where(finite, 0, 1),
        )
        metrics = {
            "loss": sums.loss / denom,
            "z_loss": sums.z_loss / denom,
            "aux_loss": sums.aux / denom,
            "accuracy": sums.correct / denom,
            "tokens": sums.weight,
            "grad_norm": grad_norm,
            "learning_rate": jnp.asarray(schedule(applied), jnp.float32),
            "finite": finite,
        }
        return new_state, metrics

    return step


def jit_train_step(step: Callable, state_shardings: TrainState, batch_sharding: NamedSharding, *,
                   sums: bool = False) -> Callable:
    """jax.jit with in/out shardings and the train-step compiler options (`xla_options`); the state argument
    is donated (updated in place). `sums`: the step is `with_window_sums`'s (state, batch, sums), whose
    sums are donated too."""
    if sums:
        return jax.jit(step, in_shardings=(state_shardings, batch_sharding, None),
                       out_shardings=(state_shardings, None), donate_argnums=(0, 2),
                       compiler_options=train_step_options() or None)
    return jax.jit(step, in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
                   donate_argnums=(0,), compiler_options=train_step_options() or None)


AVERAGED = ("loss", "accuracy", "grad_norm", "z_loss", "aux_loss")  # per-step metrics a log window averages


def window_sums() -> Metrics:
    """Empty device-side sums of a logging window (see `with_window_sums`)."""
    f32 = lambda: jnp.zeros((), jnp.float32)  # noqa: E731
    i32 = lambda: jnp.zeros((), jnp.int32)  # noqa: E731
    return {**{k: f32() for k in AVERAGED}, "finite": i32(), "nonfinite": i32(), "learning_rate": f32(),
            "last_loss": f32(), "nonfinite_loss": f32(), "nonfinite_step": i32(), "bad_in_a_row": i32(),
            "skipped": i32(), "diverged_at": i32()}


def with_window_sums(step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]], max_bad_steps: int,
                     ) -> Callable[[TrainState, Batch, Metrics], tuple[TrainState, Metrics]]:
    """A train step that adds its metrics to device-side window sums instead of returning them, so the host
    reads them only when it logs. The sums hold: the averaged metrics summed over finite steps and the count of
    those (`finite`); non-finite steps (`nonfinite`, the last one's step and loss); the last learning rate
    and loss; the state's `bad_in_a_row` and `skipped`; and `diverged_at`, the step at which `max_bad_steps`
    non-finite steps in a row were first reached (0: not yet), which the host checks before it saves."""

    def run(state: TrainState, batch: Batch, sums: Metrics) -> tuple[TrainState, Metrics]:
        new, m = step(state, batch)
        finite = m["finite"]
        out = {k: sums[k] + jnp.where(finite, m[k], 0.0) for k in AVERAGED}
        hit = (sums["diverged_at"] == 0) & (new.bad_in_a_row >= max_bad_steps)
        out.update(
            finite=sums["finite"] + finite.astype(jnp.int32),
            nonfinite=sums["nonfinite"] + (~finite).astype(jnp.int32),
            learning_rate=m["learning_rate"], last_loss=m["loss"],
            nonfinite_loss=jnp.where(finite, sums["nonfinite_loss"], m["loss"]),
            nonfinite_step=jnp.where(finite, sums["nonfinite_step"], new.step),
            bad_in_a_row=new.bad_in_a_row, skipped=new.skipped,
            diverged_at=jnp.where(hit, new.step, sums["diverged_at"]),
        )
        return new, out

    return run


def make_eval_step(objective: Objective, *, use_ema: bool = False,
                   ema_momentum: float = 0.0) -> Callable[[TrainState, Batch], TokenSums]:
    """state, batch -> TokenSums with dropout off, from the live or the EMA weights."""

    def step(state: TrainState, batch: Batch) -> TokenSums:
        params = ema_params(state, ema_momentum) if use_ema else state.params
        return objective.loss(params, batch, None, deterministic=True)

    return step
