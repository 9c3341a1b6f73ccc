"""Multi-process start: `jax.distributed.initialize` when the run spans several processes.

Explicit flags (coordinator, num_processes, process_id) win; otherwise JAX's own detection covers TPU pods
and SLURM (`SLURM_NTASKS` > 1), and Open MPI / cloud-TPU environments. A single process does nothing.
"""

from __future__ import annotations

import os
from typing import Any

import jax

from t5pegasus.errors import UserError


def _launched_by_cluster() -> bool:
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return True
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES") and "," in os.environ["TPU_WORKER_HOSTNAMES"])


def maybe_initialize(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, local_device_ids: list[int] | None = None) -> bool:
    """Initialise the JAX distributed runtime when needed; True if it was (or already is) initialised."""
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
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"could not join the distributed run ({e}); check distributed.coordinator "
                        f"(host:port of process 0), num_processes and process_id") from None
    return True
