"""Device mesh and the logical-axis rules that map parameter/activation names onto it.

Mesh axes are always ("data", "fsdp", "tensor"); a parallelism style is a rules table, never model code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from t5pegasus.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

_COMMON: Rules = (("length", None), ("kv", None), ("relpos_buckets", None), ("layers", None))
RULES: dict[str, Rules] = {
    # Replicated params; the batch split over every device.
    "data": (("batch", ("data", "fsdp")), ("embed", None), ("heads", None), ("mlp", None), ("vocab", None))
    + _COMMON,
    # ZeRO-3 style: params sharded over fsdp along their embed dimension, gathered per layer by XLA.
    "fsdp": (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("heads", None), ("mlp", None), ("vocab", None))
    + _COMMON,
    # FSDP plus Megatron-style tensor parallelism over heads / mlp / vocab.
    "fsdp_tensor": (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"),
                    ("vocab", "tensor")) + _COMMON,
}


def mesh_shape(data: int = -1, fsdp: int = 1, tensor: int = 1, num_devices: int | None = None) -> tuple[int, ...]:
    """Resolve sizes (one of them may be -1 = the rest of the devices) to a shape using every device."""
    n = jax.device_count() if num_devices is None else num_devices
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise UserError("at most one of mesh data/fsdp/tensor may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if known <= 0 or n % known:
        raise UserError(f"mesh data={data} fsdp={fsdp} tensor={tensor} does not divide {n} devices")
    sizes = [n // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != n:
        layout = dict(zip(MESH_AXES, sizes, strict=True))
        raise UserError(f"mesh {layout} uses {math.prod(sizes)} devices, but there are {n}")
    return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh with Auto axes over all (or the given) devices."""
    shape = mesh_shape(data, fsdp, tensor, None if devices is None else len(devices))
    kwargs = {} if devices is None else {"devices": devices}
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, **kwargs)


def rules_for(name: str) -> Rules:
    if name not in RULES:
        raise UserError(f"unknown sharding rules {name!r}; choose one of: {', '.join(RULES)}")
    return RULES[name]


def logical_shardings(abstract_boxed: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of logically partitioned (boxed) values, e.g. from `jax.eval_shape(init)`."""
    specs = nn.get_partition_spec(abstract_boxed)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def check_batch_size(batch_size: int, mesh: Mesh, rules: Rules) -> None:
    """A UserError unless the global batch splits evenly over the mesh axes the batch is sharded on."""
    spec = batch_sharding(mesh, rules).spec[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    ways = 1
    for axis in axes:
        ways *= mesh.shape[axis]
    if batch_size % ways:
        raise UserError(f"the batch size {batch_size} does not split over the {ways} devices the batch is sharded "
                        f"on ({' x '.join(f'{a}={mesh.shape[a]}' for a in axes)}); use a multiple of {ways}, or "
                        f"set mesh.data to a divisor of it")


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
    """Sharding of a [batch, ...] input array: batch over the data axes, the rest replicated."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, PartitionSpec(*spec))


def process_rows(sharding: NamedSharding, batch_size: int) -> list[int]:
    """The rows of a global [batch_size, ...] batch that this process's devices hold, ascending.

    That is what `jax.make_array_from_process_local_data` takes from this process, in this order (its k-th
    block of rows goes to the k-th smallest row offset among its devices), so each process reading these rows
    of one global batch gives the very batch one process would feed, on any process count.
    """
    shape = (batch_size,) + (1,) * (max(len(sharding.spec), 2) - 1)  # only the batch axis is split
    per_device = sharding.shard_shape(shape)[0]
    starts = sorted({index[0].start or 0 for index in sharding.addressable_devices_indices_map(shape).values()})
    return [start + i for start in starts for i in range(per_device)]
