"""Global shuffle of a generated 1 GB file with a 256 MB budget, against GNU `shuf` (all in memory).

Checks: peak RSS of our shuffle (run as a child process) under 300 MB, and the output is a permutation of
the input (line count plus the sum of 64-bit BLAKE2 hashes of the lines, a multiset hash).
ratio = shuf seconds / our seconds (> 1: we are faster).
"""

import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 1 << 30


def generate(path: Path) -> None:
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789 ", np.uint8)
    with open(path, "wb") as f:
        written = 0
        while written < SIZE:
            n = min(16 << 20, SIZE - written)
            buf = letters[rng.integers(0, len(letters), n)]
            buf[rng.integers(0, n, n // 80)] = 10  # ~80-byte lines
            buf[-1] = 10
            f.write(buf.tobytes())
            written += n


def multiset(path: Path) -> tuple[int, int]:
    count, total = 0, 0
    with open(path, "rb") as f:
        for line in f:
            count += 1
            total += int.from_bytes(hashlib.blake2b(line, digest_size=8).digest(), "little")
    return count, total % (1 << 64)


def main() -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", "/tmp")) as tmp:
        src, ours_out, shuf_out = Path(tmp) / "big.txt", Path(tmp) / "ours.txt", Path(tmp) / "shuf.txt"
        generate(src)
        start = time.perf_counter()
        # The library call in a child process (the `t5pegasus` CLI also loads every subcommand's imports).
        code = "import sys; from t5pegasus.pretrain.shuffle import shuffle_file as f; f(*sys.argv[1:3], 256 << 20)"
        child = [sys.executable, "-c", code, str(src), str(ours_out)]
        subprocess.run(child, check=True)
        ours = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        start = time.perf_counter()
        subprocess.run(["shuf", str(src), "-o", str(shuf_out)], check=True)
        ref = time.perf_counter() - start
        a, b = multiset(src), multiset(ours_out)
        print(f"ours {ours:.1f}s peak RSS {peak_mb:.0f} MB; shuf {ref:.1f}s; lines {a[0]}; permutation: {a == b}")
        print(json.dumps({
            "bench": "shuffle", "unit": "seconds", "ours": round(ours, 2), "reference": round(ref, 2),
            "ratio": round(ref / ours, 3), "machine": platform.machine(),
            "config": {"file_bytes": SIZE, "lines": a[0], "memory_budget": "256M", "peak_rss_mb": round(peak_mb),
                       "permutation_ok": a == b, "reference_is": "GNU shuf (in memory)"},
        }))  # fmt: skip


if __name__ == "__main__":
    main()
