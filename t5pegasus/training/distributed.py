"""Multi-process start and agreement: `jax.distributed.initialize` when the run spans several processes, and
the one stop decision all processes take together.

Explicit flags (coordinator, num_processes, process_id) win; otherwise JAX's own detection covers TPU pods
and SLURM (`SLURM_NTASKS` > 1), and Open MPI / cloud-TPU environments. A single process does nothing. The
distributed runtime's heartbeat bounds how long a process waits for a dead peer: after `heartbeat_timeout`
seconds without news the coordination service declares it dead and every other process stops.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from t5pegasus.errors import UserError


def _launched_by_cluster() -> bool:
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return True
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES") and "," in os.environ["TPU_WORKER_HOSTNAMES"])


def maybe_initialize(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, local_device_ids: list[int] | None = None,
                     heartbeat_timeout: int | None = None) -> bool:
    """Initialise the JAX distributed runtime when needed; True if it was (or already is) initialised.

    `heartbeat_timeout` (seconds) is both how long a silent peer may take before it counts as dead and how long
    a finishing process waits for the others at shutdown."""
    if jax.distributed.is_initialized():
        return True
    explicit = coordinator is not None or (num_processes or 1) > 1
    if not explicit and not _launched_by_cluster():
        return False
    kwargs: dict[str, Any] = {}
    if coordinator is not None:
        kwargs.update(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
        if num_processes is None or process_id is None:
            raise UserError("distributed.coordinator needs distributed.num_processes and distributed.process_id")
    if local_device_ids is not None:
        kwargs["local_device_ids"] = local_device_ids
    if heartbeat_timeout is not None:
        if heartbeat_timeout < 1:
            raise UserError("distributed.heartbeat_timeout must be at least 1 second")
        kwargs.update(heartbeat_timeout_seconds=heartbeat_timeout, shutdown_timeout_seconds=heartbeat_timeout)
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"could not join the distributed run ({e}); check distributed.coordinator "
                        f"(host:port of process 0), num_processes and process_id") from None
    return True


STOP_SIGNALS = ("SIGTERM", "SIGINT")  # what a stop request can be; a later one wins the agreement


def agree_on_stop(local: str | None) -> str | None:
    """The stop request of any process (the signal's name), the same answer on every process: a one-int
    all-gather (`multihost_utils.process_allgather`), so every process calls it at the same step."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    code = STOP_SIGNALS.index(local) + 1 if local in STOP_SIGNALS else 0
    agreed = int(np.max(multihost_utils.process_allgather(np.asarray([code], np.int32))))
    return STOP_SIGNALS[agreed - 1] if agreed else None
