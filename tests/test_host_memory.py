"""host_memory.retain_freed_memory: after it, a freed 64 MiB block is reused, not unmapped and mapped again.

Each case runs in a fresh interpreter so the allocator settings of the test process stay as they were.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# Allocate and free 64 MiB twice; print whether the setting took and glibc's count of mmapped bytes while the
# second block is live (mallinfo2().hblkhd: nonzero when the block came from mmap instead of the heap).
_PROBE = r"""
import ctypes, sys
from t5pegasus.host_memory import retain_freed_memory
took = retain_freed_memory()
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 << 20
libc.free(libc.malloc(size))
block = libc.malloc(size)
mapped = libc.mallinfo2().hblkhd
libc.free(block)
print(took, mapped >= size)
"""


def _probe(**env: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE], env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.split()


glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="mallopt / mallinfo2 are glibc's")


@glibc
def test_large_blocks_come_from_the_heap_once_retained():
    assert _probe() == ["True", "False"]


@glibc
def test_opt_out_keeps_the_system_default():
    assert _probe(T5PEGASUS_SYSTEM_MALLOC="1") == ["False", "True"]
