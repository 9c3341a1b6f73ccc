"""Per-executable XLA options: on the CPU backend, schedule the train step for memory, not concurrency.

XLA:CPU runs independent operations of one executable at the same time when its scheduler orders them that
way (`xla_cpu_enable_concurrency_optimized_scheduler`, on by default). Every large dot of a train step
already spreads over all cores, so two at once only share the cores and each other's caches: with the option
off, the t5-pegasus-small train step (`bench/train_step.py`) was faster in 6 of 8 interleaved runs on a
2-core x86 VM, by about 2.5% on average. For `generate` the same comparison was mixed, so it keeps XLA's
default.

The option is passed to `jax.jit(compiler_options=...)` for the one executable rather than through
XLA_FLAGS, so an XLA that no longer knows it is asked once (a trivial compile) and then left alone, instead
of aborting the process. Naming the option in XLA_FLAGS yourself always wins.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp

SEQUENTIAL_CPU_SCHEDULE = "xla_cpu_enable_concurrency_optimized_scheduler"


@functools.cache
def _accepted(name: str, value: Any) -> bool:
    """Whether this XLA compiles with option `name` set (unknown options are an error at compile time)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(jnp.zeros(())).compile()
    except Exception:  # XLA raises its own runtime error type for an unknown option
        return False
    return True


def train_step_options() -> dict[str, Any]:
    """Compiler options for the train step on this backend ({} off the CPU, or where XLA lacks them)."""
    if jax.default_backend() != "cpu" or SEQUENTIAL_CPU_SCHEDULE in os.environ.get("XLA_FLAGS", ""):
        return {}
    return {SEQUENTIAL_CPU_SCHEDULE: False} if _accepted(SEQUENTIAL_CPU_SCHEDULE, False) else {}
