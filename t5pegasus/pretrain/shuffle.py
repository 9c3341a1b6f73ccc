"""Global shuffle of a text file larger than memory (two passes over N bucket files).

Pass 1 streams the input in blocks and sends each line to one of N bucket files chosen uniformly at random
(N ~ file size / memory budget). Pass 2 loads each bucket, permutes its lines, and appends them to the output.
A uniform bucket choice followed by a uniform in-bucket permutation is a uniform permutation of all lines.
Line handling is vectorised with numpy (no per-line Python), so memory stays near one bucket plus buffers.
A final line without a newline gets one.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t5pegasus.errors import UserError
from t5pegasus.fileio import atomic_path

BLOCK = 8 << 20  # pass-1 read size
CHUNK = 1 << 20  # pass-2 output chunk
OVERHEAD = 48 << 20  # interpreter, numpy and buffers
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """'256M' -> bytes (K, M, G suffixes, powers of 1024)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B") if len(text.strip()) > 1 else text.strip()
    unit = t[-1:] if t[-1:] in _UNITS and not t[-1:].isdigit() else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        raise UserError(f"cannot read size {text!r}; write e.g. 256M or 2G") from None
    return int(value * _UNITS[unit])


@dataclass
class ShuffleStats:
    lines: int
    bytes: int
    buckets: int


def _line_bounds(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ends = np.flatnonzero(arr == 10) + 1
    starts = np.concatenate([[0], ends[:-1]])
    return starts, ends


def _write_lines(arr: np.ndarray, starts: np.ndarray, lengths: np.ndarray, out) -> None:
    """Write the lines arr[starts[i] : starts[i] + lengths[i]], in that order, gathered ~CHUNK bytes at a time
    (so the byte-index arrays stay small)."""
    cum = np.cumsum(lengths)  # output offset after each line
    i, n = 0, len(starts)
    while i < n:
        base = int(cum[i - 1]) if i else 0
        j = max(i + 1, int(np.searchsorted(cum, base + CHUNK, side="right")))
        ln = lengths[i:j]
        first = np.repeat(starts[i:j] - (cum[i:j] - ln - base), ln)  # source offset minus output offset
        out.write(arr[first + np.arange(first.size)].tobytes())
        i = j


def _scatter(block: bytes, files: list, rng: np.random.Generator) -> int:
    """Send each complete line of `block` to a random bucket; returns the number of lines. Lines are grouped
    by bucket with one stable sort (keeping their order within a bucket), then each bucket's run is written."""
    arr = np.frombuffer(block, np.uint8)
    starts, ends = _line_bounds(arr)
    n = len(starts)
    if n == 0:
        return 0
    buckets = rng.integers(0, len(files), size=n, dtype=np.uint16)
    order = np.argsort(buckets, kind="stable")
    bounds = np.searchsorted(buckets[order], np.arange(len(files) + 1))
    starts, lengths = starts[order], (ends - starts)[order]
    for b, f in enumerate(files):
        lo, hi = bounds[b], bounds[b + 1]
        if hi > lo:
            _write_lines(arr, starts[lo:hi], lengths[lo:hi], f)
    return n


def _permute_into(data: bytes, out, rng: np.random.Generator) -> int:
    """Write the lines of `data` to `out` in a uniformly random order; returns the number of lines."""
    arr = np.frombuffer(data, np.uint8)
    ends = (np.flatnonzero(arr == 10) + 1).astype(np.int64)
    n = len(ends)
    order = rng.permutation(n)
    starts = np.empty(n, np.int64)
    starts[0:1], starts[1:] = 0, ends[:-1]
    starts, lengths = starts[order], (ends - starts)[order]
    del ends, order
    _write_lines(arr, starts, lengths, out)
    return n


def shuffle_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    memory: int,
    *,
    seed: int = 0,
    tmp_dir: str | os.PathLike | None = None,
) -> ShuffleStats:
    """Write a uniformly shuffled copy of `src`'s lines to `dst`, using about `memory` bytes."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UserError(f"input {src} does not exist")
    if memory < 2 * OVERHEAD:
        raise UserError(f"memory budget {memory} bytes is too small; give at least {2 * OVERHEAD >> 20}M")
    size = src.stat().st_size
    per_bucket = (memory - OVERHEAD) / 3.0  # bucket bytes + per-line offsets, permutation, buffers
    n_buckets = max(1, math.ceil(size / per_bucket))
    if n_buckets > 60000:
        raise UserError("the memory budget is too small for this file; raise --memory")
    rng = np.random.default_rng(seed)
    lines = 0
    with tempfile.TemporaryDirectory(prefix=".shuffle-", dir=tmp_dir or dst.parent) as tmp:
        paths = [Path(tmp) / f"bucket-{b:05d}" for b in range(n_buckets)]
        files = [open(p, "wb", buffering=1 << 20) for p in paths]
        try:
            with open(src, "rb") as f:
                rest = b""
                while block := f.read(BLOCK):
                    block = rest + block
                    cut = block.rfind(b"\n") + 1
                    rest = block[cut:]
                    lines += _scatter(block[:cut], files, rng)
                if rest:
                    lines += _scatter(rest + b"\n", files, rng)
        finally:
            for fh in files:
                fh.close()
        written = 0
        with atomic_path(dst) as tmp_out, open(tmp_out, "wb") as out:
            for p in paths:
                data = p.read_bytes()
                p.unlink()
                written += _permute_into(data, out, rng)
                del data
    assert written == lines
    return ShuffleStats(lines=lines, bytes=size, buckets=n_buckets)
