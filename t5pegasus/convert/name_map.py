"""A declarative map between our parameter tree and a foreign checkpoint's tensor names, used both ways.

Each `Entry` ties one foreign tensor (name, shape) to the parameters of ours it is made from, with the two
conversions between them. Export and import walk the same list, so the names written are exactly the names
read, and every shape is checked on both sides with an error that names the tensor and the expected shape.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from t5pegasus.convert.checkpoint_files import TensorSource
from t5pegasus.errors import UserError

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One foreign tensor `name` of `shape`, made from our parameters at `ours` (slash paths) of `our_shapes`.

    `to_foreign(*ours) -> tensor` and `from_foreign(tensor) -> tuple(ours)` convert between the layouts.
    `aliases` are other spellings accepted on import; an `optional` tensor may be absent on import.
    """

    name: str
    shape: Shape
    ours: tuple[str, ...]
    our_shapes: tuple[Shape, ...]
    to_foreign: Callable[..., np.ndarray]
    from_foreign: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    aliases: tuple[str, ...] = ()
    optional: bool = False


def reshaped(name: str, shape: Shape, path: str, our_shape: Shape, aliases: tuple[str, ...] = ()) -> Entry:
    """A tensor that is our parameter with its axes merged or split (same element order)."""
    return Entry(name, shape, (path,), (our_shape,), lambda x: x.reshape(shape), lambda t: (t.reshape(our_shape),),
                 aliases)


def same(name: str, path: str, shape: Shape, aliases: tuple[str, ...] = ()) -> Entry:
    """A tensor stored exactly as our parameter."""
    return reshaped(name, shape, path, shape, aliases)


def transposed(name: str, path: str, our_shape: Shape) -> Entry:
    """A matrix stored transposed."""
    return Entry(name, our_shape[::-1], (path,), (our_shape,), lambda x: x.T, lambda t: (t.T,))


# How a foreign format stores a kernel: [in, out] (TF, HF Conv1D), [1, in, out] (a 1x1 convolution, OpenAI
# GPT-2) or [out, in] (torch Linear); the value is the index of the output axis.
KERNEL_LAYOUTS = {"in_out": 1, "conv": 2, "out_in": 0}


def kernel(name: str, path: str, our_shape: Shape, in_axes: int = 1, layout: str = "in_out") -> Entry:
    """A matrix stored in `layout` (see KERNEL_LAYOUTS) from our kernel whose first `in_axes` axes are its
    input and the rest its output (e.g. [d, heads, kv] with in_axes=1, [heads, kv, d] with in_axes=2)."""
    n_in, n_out = math.prod(our_shape[:in_axes]), math.prod(our_shape[in_axes:])
    if layout == "out_in":
        return Entry(name, (n_out, n_in), (path,), (our_shape,), lambda x: x.reshape(n_in, n_out).T,
                     lambda t: (t.T.reshape(our_shape),))
    return reshaped(name, (1, n_in, n_out) if layout == "conv" else (n_in, n_out), path, our_shape)


def fused(name: str, axis: int, parts: list[Entry]) -> Entry:
    """One foreign tensor holding the foreign tensors of `parts` concatenated along `axis` (GPT-2's fused
    [q | k | v] projection); the parts' own names are not used."""
    sizes = [p.shape[axis] for p in parts]
    shape = (*parts[0].shape[:axis], sum(sizes), *parts[0].shape[axis + 1:])
    ends = np.cumsum([len(p.ours) for p in parts])  # each part's parameters end here in `ours`

    def to_foreign(*ours: np.ndarray) -> np.ndarray:
        return np.concatenate([p.to_foreign(*ours[end - len(p.ours):end]) for p, end in zip(parts, ends, strict=True)],
                              axis=axis)

    def from_foreign(tensor: np.ndarray) -> tuple[np.ndarray, ...]:
        pieces = np.split(tensor, np.cumsum(sizes)[:-1], axis=axis)
        return tuple(v for p, piece in zip(parts, pieces, strict=True) for v in p.from_foreign(piece))

    return Entry(name, shape, sum((p.ours for p in parts), ()), sum((p.our_shapes for p in parts), ()), to_foreign,
                 from_foreign)


def constant(name: str, value: np.ndarray) -> Entry:
    """A tensor the foreign layout needs but we have no parameter for: written as `value`, dropped on import."""
    return Entry(name, tuple(value.shape), (), (), lambda: value, lambda t: (), optional=True)


def lookup(table: dict[str, str], value: str, what: str) -> str:
    """`table[value]`: a foreign config name (an activation, ...) as ours, or a UserError naming `what`."""
    if value not in table:
        raise UserError(f"{what} {value!r} is not supported; known: {', '.join(sorted(table))}")
    return table[value]


def _get(tree: Any, path: str) -> Any:
    for key in path.split("/"):
        if not isinstance(tree, dict) or key not in tree:
            raise KeyError(path)
        tree = tree[key]
    return tree


def _set(tree: dict, path: str, value: np.ndarray) -> None:
    *parents, leaf = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _leaf_paths(tree: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaf_paths(value, f"{prefix}{key}/")
    else:
        yield prefix[:-1]


def to_foreign(entries: list[Entry], params: dict[str, Any], where: str) -> dict[str, np.ndarray]:
    """The foreign tensors (float32) for our unscanned, unboxed `params`. A missing or mis-shaped parameter, or
    one that no entry writes, is a UserError naming it, the foreign tensor and the expected shape."""
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for entry in entries:
        values = []
        for path, shape in zip(entry.ours, entry.our_shapes, strict=True):
            try:
                value = np.asarray(_get(params, path), dtype=np.float32)
            except KeyError:
                raise UserError(f"{where}: parameter {path!r} (shape {shape}) is missing; it is needed for tensor "
                                f"{entry.name!r} of shape {entry.shape}. Are the params of this config?") from None
            if value.shape != shape:
                raise UserError(f"{where}: parameter {path!r} has shape {value.shape}, expected {shape} "
                                f"(for tensor {entry.name!r} of shape {entry.shape})")
            values.append(value)
            used.add(path)
        out[entry.name] = np.ascontiguousarray(entry.to_foreign(*values), dtype=np.float32)
    left = sorted(p for p in _leaf_paths(params) if p not in used)
    if left:
        raise UserError(f"{where}: {len(left)} parameter(s) have no name in this format, e.g. {', '.join(left[:4])}")
    return out


def from_foreign(entries: list[Entry], source: TensorSource) -> dict[str, Any]:
    """Our (unscanned) parameter tree from the foreign tensors; each is shape-checked by `source.take`."""
    params: dict[str, Any] = {}
    for entry in entries:
        name = next((n for n in (entry.name, *entry.aliases) if source.has(n)), entry.name)
        if entry.optional and not source.has(name):
            continue
        values = entry.from_foreign(source.take(name, entry.shape))
        for path, value in zip(entry.ours, values, strict=True):
            _set(params, path, value)
    return params


def names(entries: list[Entry]) -> dict[str, Shape]:
    """{foreign name: shape} of a map (what an export writes)."""
    return {e.name: e.shape for e in entries}
