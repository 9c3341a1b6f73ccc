"""Reading a training run directory: its model config and the parameters (or their EMA) of the latest checkpoint.

Layout written by `t5pegasus.training`: `<run>/model_config.json`, `<run>/config.yaml` (the run config, for the
EMA momentum) and orbax steps `<run>/checkpoints/<step>/state` holding the TrainState (params, opt_state, ema).
The state is restored onto one local device whatever mesh wrote it.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from t5pegasus.config import ConfigBase, load_config
from t5pegasus.errors import UserError


def is_run_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / "model_config.json").is_file() and (path / "checkpoints").is_dir()


def latest_step(run: Path) -> int:
    steps = [int(p.name) for p in (run / "checkpoints").iterdir()
             if p.name.isdigit() and (p / "state").is_dir()]
    if not steps:
        raise UserError(f"{run / 'checkpoints'} holds no finished checkpoint; train longer or pick another run")
    return max(steps)


def _ema_momentum(run: Path) -> float:
    import yaml

    path = run / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path} is missing: the EMA momentum of this run is unknown")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    momentum = (values.get("optim") or {}).get("ema", 0.0)
    return float(momentum or 0.0)


def load_run(run: str | os.PathLike, step: int | None = None, ema: bool = False) -> tuple[ConfigBase, Any]:
    """(model config, params) of checkpoint `step` (default: the latest) of a training run; with `ema`, the
    bias-corrected average weights (an error if the run kept none)."""
    import jax
    import orbax.checkpoint as ocp

    from t5pegasus.training.state import ema_params

    run = Path(run)
    if not is_run_dir(run):
        raise UserError(f"{run} is not a training run folder (no model_config.json and checkpoints/)")
    cfg = load_config(run / "model_config.json")
    step = latest_step(run) if step is None else step
    path = (run / "checkpoints" / str(step) / "state").absolute()
    if not path.is_dir():
        raise UserError(f"{path} does not exist; steps here: {latest_step(run)} is the latest")
    checkpointer = ocp.StandardCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    state = checkpointer.restore(path, target)
    checkpointer.close()
    if not ema:
        return cfg, state["params"]
    saved = state.get("ema")
    if not saved:
        raise UserError(f"run {run} kept no EMA of the weights (optim.ema is 0); export without --ema")
    average = ema_params(SimpleNamespace(ema=SimpleNamespace(count=saved["count"], ema=saved["ema"]),
                                         params=state["params"]), _ema_momentum(run))
    return cfg, average
