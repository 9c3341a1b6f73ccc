"""Orbax checkpoints of the train state plus the global data-iterator position.

Asynchronous saves, the last `keep` kept; a step directory appears only once complete (orbax writes into a
temporary folder and renames it when every item is written), so a run killed mid-save, or a save that fails,
resumes from the previous one. Restoring takes the target shardings of the current mesh, so a checkpoint
written on 8 devices restores on 1 or 4, and the data position is the same on every process (the global
batches read), so it resumes on any process count. A save that cannot be written (disk full, permission, a
vanished folder) is a `CheckpointWriteError` naming the folder, the step and the last good step.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from t5pegasus.errors import UserError, first_line, root_cause, unreadable
from t5pegasus.training.run_folder import RunFolder
from t5pegasus.training.state import TrainState

# What the OS / tensorstore say when a write cannot happen: a user's problem to fix, not a bug.
_WRITE_FAILURES = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "NOT_FOUND", "No space left", "Permission denied",
                   "No such file", "Read-only file system", "Disk quota", "File too large", "FAILED_PRECONDITION")


class CheckpointWriteError(UserError):
    """A checkpoint could not be written; the run stops and the last finished checkpoint stays the good one."""


class _QuietOrbax(logging.Filter):
    """Drop orbax's own error logs (with tracebacks, from its save threads) and asyncio's "exception was never
    retrieved" for orbax's abandoned write tasks: the Checkpointer reports a failed write itself, once, and
    re-raises anything else with its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if record.name == "asyncio":
            return not ("never retrieved" in str(record.msg) and "orbax" in record.getMessage())
        return "orbax" not in record.pathname


_QUIET = _QuietOrbax()


def _quiet_abandoned_writes() -> None:
    """After one array write fails, orbax closes the asyncio loop its other writes report to; tensorstore then
    reports each of them as an unraisable "Event loop is closed" (hundreds of tracebacks for one full disk).
    Drop exactly those; every other unraisable error goes to the hook that was there."""
    previous = sys.unraisablehook
    if getattr(previous, "t5pegasus", False):
        return

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.t5pegasus = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _release_orbax_waiters() -> None:
    """After a failed save, orbax's commit threads may wait (minutes: 5 seen here) for signals the failed
    operation never sends, and keep the process from exiting: cancel them and send those signals. Uses orbax
    internals, so anything unexpected leaves the threads as they are."""
    try:
        from orbax.checkpoint._src.futures import future as orbax_future

        for thread in threading.enumerate():
            if isinstance(thread, orbax_future._SignalingThread) and thread.is_alive():
                thread.cancel()
                orbax_future.set_signals(thread._receive_signals, operation_id=thread._operation_id)
    except Exception:  # noqa: BLE001 - a best effort on the way out
        pass


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


def _reason(cause: BaseException) -> str:
    """What the OS said ("No space left on device"), from an OSError or tensorstore's `os_error_code='28'`."""
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    code = re.search(r"os_error_code='?(\d+)", str(cause))
    if code:
        return os.strerror(int(code.group(1)))
    first = first_line(cause)
    return first if len(first) <= 200 else first[:200] + "…"


class Checkpointer:
    """Save / restore (state, data position) under `directory/<step>/`."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, asynchronous: bool = True) -> None:
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=asynchronous,
                                               create=True)
        for name in ("absl", "asyncio"):  # orbax logs through absl; its write tasks run on asyncio
            logging.getLogger(name).addFilter(_QUIET)
        _quiet_abandoned_writes()
        self._pending: int | None = None  # the step whose asynchronous save is in flight
        self._failed: CheckpointWriteError | None = None
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))
        except Exception as e:
            raise self._write_error(e, None) from None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def good_steps(self) -> list[int]:
        """The finished checkpoints on disk (the run folder's rule; a failed or cut-short save is not one)."""
        return RunFolder(self.directory.parent).steps()

    def save(self, state: TrainState, data_state: Any, *, force: bool = False) -> bool:
        """Start saving `state` at its step (returns at once when asynchronous) with the data position
        `data_state` (global: the same on every process). A save that fails, now or in the background, raises
        `CheckpointWriteError` here or at the next `save` / `wait` / `close`."""
        step = int(jax.device_get(state.step))
        positions = _allgather_json(data_state)
        if any(p != positions[0] for p in positions):
            raise RuntimeError(f"the processes are at different data positions at step {step}: {positions}")
        self.wait()
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave({"position": data_state}))
        try:
            saved = self.manager.save(step, args=args, force=force)
        except Exception as e:
            raise self._write_error(e, step) from None
        if saved:
            self._pending = step
        return saved

    def _write_error(self, error: BaseException, step: int | None) -> BaseException:
        """`CheckpointWriteError` for an OS / tensorstore write failure of `step`; `error` itself otherwise."""
        cause = root_cause(error)
        reason = _reason(cause)
        if not (isinstance(cause, OSError) or any(code in str(cause) for code in _WRITE_FAILURES)):
            return error
        good = [s for s in self.good_steps() if step is None or s < step]
        what = f"the checkpoint of step {step}" if step is not None else "checkpoints"
        last = (f"the last good checkpoint is step {max(good)}" if good else "no checkpoint was finished before it")
        self._failed = CheckpointWriteError(
            f"could not write {what} in {self.directory} ({reason}); {last}. Free space or fix the folder, then "
            f"rerun the same command to resume" + (f" from step {max(good)}" if good else ""))
        return self._failed

    def restore(self, step: int, abstract: TrainState, shardings: TrainState) -> tuple[TrainState, Any]:
        """(state placed by `shardings`, the data position) of checkpoint `step`."""
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        except Exception as e:  # orbax wraps what tensorstore says in plain Exceptions
            self.manager.close()  # its reader threads would otherwise print tracebacks at exit
            cause = root_cause(e)
            if any(code in str(cause) for code in ("OUT_OF_RANGE", "DATA_LOSS", "metadata")):
                earlier = [s for s in self.good_steps() if s < step]
                remedy = (f"move it out of {self.directory} to resume from step {max(earlier)}" if earlier
                          else "move it away to start the run again")
                raise unreadable(self.directory / str(step), cause, "checkpoint", remedy) from None
            if not isinstance(cause, ValueError | KeyError):
                raise
            raise UserError(f"checkpoint {self.directory / str(step)} does not fit this run's model/optimiser "
                            f"({cause}); use a new run name or the config it was written with") from None
        data = restored["data"]
        if "position" in data:
            return restored["state"], data["position"]
        positions = data["processes"]  # t5pegasus before global positions: one per process, each its own order
        if len(positions) != 1:
            raise UserError(f"checkpoint {self.directory / str(step)} holds the data positions of {len(positions)} "
                            f"processes from an older t5pegasus, which read the data in another order; it cannot "
                            f"resume: start a new run (name=NEW_NAME)")
        return restored["state"], positions[0]

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk (a failed one raises `CheckpointWriteError`)."""
        if self._failed is not None:
            raise self._failed
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._write_error(e, self._pending) from None
        self._pending = None

    def close(self) -> None:
        """Wait for pending saves and release orbax's threads; after a failed save, only release them."""
        try:
            if self._failed is None:
                self.wait()
        finally:
            if self._failed is not None:
                _release_orbax_waiters()
            try:
                self.manager.close()
            except Exception:
                if self._failed is None:
                    raise
