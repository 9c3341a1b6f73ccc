"""Keep freed host memory in the process so XLA:CPU's large per-call buffers do not page-fault every step.

glibc's malloc serves a request above its mmap threshold (128 KiB, rising to at most 32 MiB) with a fresh
mmap and unmaps it on free. XLA:CPU allocates each executable's temporary buffer, and every output larger
than that, on every call, so a step whose buffers outgrow the threshold pays for faulting in and zeroing all
of those pages again each time: measured here, a 16k-token linear-attention forward + backward went from
about 76 ms to 48 ms with the thresholds raised, and a 4k-token one was unchanged. Raising the mmap and trim
thresholds makes glibc reuse the freed blocks from its heap instead, as tcmalloc or jemalloc would. The cost
is that the process keeps its high-water mark of host memory instead of returning it to the system, which is
what a training or generation process wants anyway.

A no-op where the C library is not glibc (macOS, musl) or when T5PEGASUS_SYSTEM_MALLOC=1 is set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # 1 GiB: above any single buffer of the models and benches here
_done = False


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they were set (or already)."""
    global _done
    if _done:
        return True
    if os.environ.get("T5PEGASUS_SYSTEM_MALLOC") == "1":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    return _done


def describe() -> str:
    """How this process's host allocator is set, for a bench's JSON record."""
    return "freed memory retained" if _done else "system default"
