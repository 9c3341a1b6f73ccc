"""Orbax checkpoints of the train state plus every process's data-iterator position.

Asynchronous saves, the last `keep` kept; a step directory appears only once complete, so a run killed
mid-save resumes from the previous one. Restoring takes the target shardings of the current mesh, so a
checkpoint written on 8 devices restores on 1 or 4.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from t5pegasus.errors import UserError, root_cause, unreadable
from t5pegasus.training.state import TrainState


def _allgather_json(value: Any) -> list[Any]:
    """Every process's JSON-able `value`, in process order (one process: [value])."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(value).encode("utf-8"), np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([raw.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: raw.size] = raw
    gathered = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[: int(n)]).decode("utf-8")) for row, n in zip(gathered, lengths.ravel(),
                                                                              strict=True)]


class Checkpointer:
    """Save / restore (state, data positions) under `directory/<step>/`."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, asynchronous: bool = True) -> None:
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state: TrainState, data_state: Any, *, force: bool = False) -> bool:
        """Start saving `state` at its step (returns at once when asynchronous); `data_state` is this
        process's iterator position (gathered from all processes)."""
        step = int(jax.device_get(state.step))
        positions = _allgather_json(data_state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave({"processes": positions}))
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract: TrainState, shardings: TrainState) -> tuple[TrainState, Any]:
        """(state placed by `shardings`, this process's data position) of checkpoint `step`."""
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        except Exception as e:  # orbax wraps what tensorstore says in plain Exceptions
            self.manager.close()  # its reader threads would otherwise print tracebacks at exit
            cause = root_cause(e)
            if any(code in str(cause) for code in ("OUT_OF_RANGE", "DATA_LOSS", "metadata")):
                earlier = [s for s in self.manager.all_steps() if s < step]
                remedy = (f"move it out of {self.directory} to resume from step {max(earlier)}" if earlier
                          else "move it away to start the run again")
                raise unreadable(self.directory / str(step), cause, "checkpoint", remedy) from None
            if not isinstance(cause, ValueError | KeyError):
                raise
            raise UserError(f"checkpoint {self.directory / str(step)} does not fit this run's model/optimiser "
                            f"({cause}); use a new run name or the config it was written with") from None
        positions = restored["data"]["processes"]
        if len(positions) != jax.process_count():
            raise UserError(f"checkpoint {self.directory / str(step)} was written by {len(positions)} processes; "
                            f"resume it with the same number (now {jax.process_count()})")
        return restored["state"], positions[jax.process_index()]

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
