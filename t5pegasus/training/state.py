"""The train state (step, params, optimiser state, EMA, RNG, NaN counters), initialised directly sharded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax import Array
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t5pegasus.models import unbox
from t5pegasus.training.mesh import Rules, logical_shardings


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pytree of arrays, so one orbax item and one donated argument."""

    step: Array  # int32: batches consumed (skipped non-finite steps included)
    params: Any
    opt_state: Any
    ema: Any  # optax.EmaState (count, raw zero-initialised average) or None
    rng: Array  # uint32[2] base key; step t uses fold_in(rng, t)
    bad_in_a_row: Array  # int32: consecutive non-finite steps
    skipped: Array  # int32: non-finite steps skipped in total


def ema_transform(momentum: float) -> optax.GradientTransformation:
    """EMA of the weights: zero-initialised, bias-corrected by 1 - m^t (optax.ema with debias)."""
    return optax.ema(momentum, debias=True)


def ema_params(state: TrainState, momentum: float) -> Any:
    """The bias-corrected average ema / (1 - m^t); the live params when no EMA is kept or none taken yet."""
    if state.ema is None:
        return state.params
    count = state.ema.count
    correction = 1.0 - jnp.asarray(momentum, jnp.float32) ** count.astype(jnp.float32)
    return jax.tree.map(lambda e, p: jnp.where(count > 0, e / jnp.maximum(correction, 1e-30), p).astype(p.dtype),
                        state.ema.ema, state.params)


def _path_names(path: tuple) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _like_params(abstract_tree: Any, abstract_params: Any, param_shardings: Any, replicated: NamedSharding) -> Any:
    """Shardings for an optimiser-state tree: a leaf whose path ends with a parameter's path and has its shape
    is sharded like that parameter; anything else (counts, factored Adafactor rows/cols) is replicated."""
    by_path = {}
    for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(abstract_params),
                                jax.tree_util.tree_leaves(param_shardings), strict=True):
        by_path[_path_names(path)] = (leaf.shape, sh)

    def pick(path: tuple, leaf: Any) -> NamedSharding:
        names = _path_names(path)
        for i in range(len(names)):
            hit = by_path.get(names[i:])
            if hit is not None and hit[0] == leaf.shape:
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_tree)


def state_shardings(init_params: Callable[[Array], Any], tx: optax.GradientTransformation, ema_momentum: float,
                    mesh: Mesh, rules: Rules) -> tuple[TrainState, TrainState]:
    """(abstract state, its shardings) without allocating anything."""
    boxed = jax.eval_shape(init_params, jax.random.PRNGKey(0))
    param_sh = logical_shardings(boxed, mesh, rules)
    abstract = jax.eval_shape(lambda key: _fresh_state(init_params, tx, ema_momentum, key), jax.random.PRNGKey(0))
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = TrainState(
        step=replicated,
        params=param_sh,
        opt_state=_like_params(abstract.opt_state, abstract.params, param_sh, replicated),
        ema=None if abstract.ema is None else _like_params(abstract.ema, abstract.params, param_sh, replicated),
        rng=replicated,
        bad_in_a_row=replicated,
        skipped=replicated,
    )
    return abstract, shardings


def _fresh_state(init_params: Callable[[Array], Any], tx: optax.GradientTransformation, ema_momentum: float,
                 key: Array) -> TrainState:
    params = unbox(init_params(key))
    ema = ema_transform(ema_momentum).init(params) if ema_momentum > 0 else None
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=tx.init(params), ema=ema,
                      rng=jax.random.PRNGKey(0), bad_in_a_row=zero, skipped=zero)


def init_state(init_params: Callable[[Array], Any], tx: optax.GradientTransformation, ema_momentum: float,
               seed: int, shardings: TrainState) -> TrainState:
    """A fresh state born sharded (jit with out_shardings): no device ever holds the whole model.

    Call under `jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)`. Parameters come from
    fold_in(seed key, 0), the step RNG base from fold_in(seed key, 1).
    """

    def make() -> TrainState:
        base = jax.random.PRNGKey(seed)
        state = _fresh_state(init_params, tx, ema_momentum, jax.random.fold_in(base, 0))
        return state.replace(rng=jax.random.fold_in(base, 1))

    return jax.jit(make, out_shardings=shardings)()


def state_from_params(params: Any, tx: optax.GradientTransformation, ema_momentum: float, seed: int,
                      abstract: TrainState, shardings: TrainState) -> TrainState:
    """A fresh state (step 0, new moments and EMA) around given `params` (fine-tuning from a trained model),
    placed by `shardings`. `params` must have the abstract state's parameter paths, shapes and dtypes (any
    nesting of dicts); a mismatch is a UserError listing the differences."""
    import numpy as np

    from t5pegasus.errors import UserError

    given = {_path_names(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(unbox(params))}
    wanted = jax.tree_util.tree_leaves_with_path(abstract.params)
    problems = [f"{'/'.join(_path_names(p))} missing" for p, _ in wanted if _path_names(p) not in given]
    problems += [f"{'/'.join(_path_names(p))} is {tuple(np.shape(given[_path_names(p)]))}, the model needs "
                 f"{tuple(a.shape)}" for p, a in wanted
                 if _path_names(p) in given and tuple(np.shape(given[_path_names(p)])) != tuple(a.shape)]
    extra = set(given) - {_path_names(p) for p, _ in wanted}
    problems += [f"{'/'.join(k)} is not a parameter of the model" for k in sorted(extra)]
    if problems:
        raise UserError(f"the initial weights do not fit the model ({len(problems)} difference(s): "
                        f"{'; '.join(problems[:5])})")
    leaves = [np.asarray(given[_path_names(p)], a.dtype) for p, a in wanted]
    placed = jax.device_put(jax.tree.unflatten(jax.tree.structure(abstract.params), leaves), shardings.params)

    def make(p: Any) -> TrainState:
        ema = ema_transform(ema_momentum).init(p) if ema_momentum > 0 else None
        zero = jnp.zeros((), jnp.int32)
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
        return TrainState(step=zero, params=p, opt_state=tx.init(p), ema=ema, rng=rng, bad_in_a_row=zero,
                          skipped=zero)

    return jax.jit(make, in_shardings=(shardings.params,), out_shardings=shardings)(placed)
