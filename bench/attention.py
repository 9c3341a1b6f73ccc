"""Attention kinds: time and peak working memory of one forward + backward versus sequence length.

Runs softmax attention (dense einsum reference, and the same computation chunked over queries so 16k fits
in memory) and each linear-complexity kind (elu+1 linear, Performer FAVOR+, Nystromformer; linear and
Performer also causal) at 1k..16k tokens, batch 1, a few heads of dim 64, on whatever device JAX has.
Memory is the compiled executable's temp allocation (XLA memory analysis), not process RSS. Time is wall
time and process CPU time of the same run (the latter less sensitive to other load on a shared machine).
Ends with one JSON line: {"bench": "attention", "unit": "s", "ratios_16k_over_4k": {...}, ...}.
Usage: python bench/attention.py [--lengths 1024,2048,...] [--heads 2] [--repeats 5] [--kinds linear,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp

from t5pegasus.attention import (
    einsum_attention,
    linear_attention,
    nystrom_attention,
    orthogonal_random_features,
    performer_attention,
)
from t5pegasus.host_memory import describe, retain_freed_memory

HEAD_DIM = 64
PERFORMER_FEATURES = 128
NYSTROM_LANDMARKS = 64
QUERY_CHUNK = 1024
LONG_RUN_S = 2.0


def softmax_chunked(q, k, v):
    """Exact softmax attention computed one block of queries at a time, each block rematerialised in the
    backward pass: O(n^2) time but O(n * chunk) memory."""
    b, n, h, d = q.shape
    c = min(QUERY_CHUNK, n)
    blocks = q.reshape(b, n // c, c, h, d).swapaxes(0, 1)
    attend = jax.checkpoint(lambda qb: einsum_attention(qb, k, v))
    return jax.lax.map(attend, blocks).swapaxes(0, 1).reshape(b, n, h, d)


def kinds(head_dim: int) -> dict:
    proj = orthogonal_random_features(jax.random.key(0), PERFORMER_FEATURES, head_dim)
    return {
        "softmax": lambda q, k, v: einsum_attention(q, k, v),
        "softmax_chunked": softmax_chunked,
        "linear": lambda q, k, v: linear_attention(q, k, v),
        "linear_causal": lambda q, k, v: linear_attention(q, k, v, causal=True),
        "performer": lambda q, k, v: performer_attention(q, k, v, proj),
        "performer_causal": lambda q, k, v: performer_attention(q, k, v, proj, causal=True),
        "nystrom": lambda q, k, v: nystrom_attention(q, k, v, NYSTROM_LANDMARKS),
    }


def available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def forward_backward(fn):
    def loss(q, k, v, cot):
        return jnp.sum(fn(q, k, v) * cot)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def measure(fn, n: int, heads: int, repeats: int, budget: int) -> dict:
    keys = jax.random.split(jax.random.key(n), 4)
    q, k, v, cot = (jax.random.normal(key, (1, n, heads, HEAD_DIM), jnp.float32) for key in keys)
    step = forward_backward(fn)
    compiled = step.lower(q, k, v, cot).compile()
    mem = compiled.memory_analysis()
    temp = int(mem.temp_size_in_bytes) if mem is not None else None
    if temp is not None and temp > budget:
        return {"skipped": f"needs {temp / 2**30:.1f} GiB of temp memory, {budget / 2**30:.1f} GiB allowed"}

    def run() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(q, k, v, cot))
        return time.perf_counter() - wall, time.process_time() - cpu

    first = run()  # warm-up (already compiled)
    # Multi-second runs are not warm-up sensitive; timing them once keeps the bench to a few minutes.
    runs = [first] if first[0] > LONG_RUN_S else [run() for _ in range(repeats)]
    wall, cpu = min(runs)
    return {"time_s": wall, "cpu_s": min(r[1] for r in runs), "temp_bytes": temp, "runs": len(runs)}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {cpu}, {os.cpu_count()} cores"


def main() -> None:
    retain_freed_memory()  # as the `t5pegasus` command does; applies to the reference in this process too
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-fraction", type=float, default=0.6, help="skip a run needing more of free RAM")
    parser.add_argument("--kinds", default=None, help="comma-separated subset of: " + ", ".join(kinds(HEAD_DIM)))
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    chosen = kinds(HEAD_DIM)
    if args.kinds:
        chosen = {name: chosen[name] for name in args.kinds.split(",")}
    budget = int(available_bytes() * args.memory_fraction)

    results: dict[str, dict[str, dict]] = {}
    for name, fn in chosen.items():
        results[name] = {}
        for n in lengths:
            r = measure(fn, n, args.heads, args.repeats, budget)
            results[name][str(n)] = r
            shown = r.get("skipped") or (
                f"{r['time_s']:.4f} s  cpu {r['cpu_s']:.4f} s  temp {r['temp_bytes'] / 2**20:.1f} MiB"
            )
            print(f"{name:17s} n={n:6d}  {shown}", flush=True)

    def ratio(name: str, key: str) -> float | None:
        a, b = results[name].get("16384", {}), results[name].get("4096", {})
        return round(a[key] / b[key], 2) if key in a and key in b and b[key] else None

    summary = {
        "bench": "attention",
        "unit": "s",
        "ratios_16k_over_4k": {name: ratio(name, "time_s") for name in results},
        "cpu_time_ratios_16k_over_4k": {name: ratio(name, "cpu_s") for name in results},
        "memory_ratios_16k_over_4k": {name: ratio(name, "temp_bytes") for name in results},
        "machine": machine(),
        "config": {
            "batch": 1,
            "heads": args.heads,
            "head_dim": HEAD_DIM,
            "lengths": lengths,
            "pass": "forward+backward (grad wrt q, k, v)",
            "time": f"min of {args.repeats} after a warm-up; the warm-up alone when it took > {LONG_RUN_S} s",
            "memory": "compiled temp_size_in_bytes",
            "cpu_s": "process CPU time of the same run (less sensitive to other load on the machine)",
            "performer_features": PERFORMER_FEATURES,
            "nystrom_landmarks": NYSTROM_LANDMARKS,
            "softmax_chunked_query_block": QUERY_CHUNK,
            "linear_chunk": 128,
            "jax": jax.__version__,
            "host_malloc": describe(),
        },
        "per_length": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
