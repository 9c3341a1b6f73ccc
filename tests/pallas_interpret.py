"""Run TPU Pallas kernels on the CPU with Pallas' HLO interpreter (the grid as a plain JAX loop).

`pltpu.force_tpu_interpret_mode()` uses the Mosaic interpreter instead, which runs every kernel step as an
`io_callback` that itself dispatches JAX operations. On a 2-core CPU that deadlocks now and then, with the
callback thread in `apply_primitive` and the main thread dispatching the next eager operation: it hung
`test_causal_models_hand_is_causal_to_the_kernels` in CI (killed after pytest-timeout's 900 s) and about one
run in six here. The HLO interpreter has no callbacks, so it cannot deadlock, and it computes the same kernel.

JAX has no public switch for it on kernels that do not take `interpret=` (the TPU flash kernel does not):
`force_tpu_interpret_mode` sets the config below to its parameters, and `True` there selects the HLO
interpreter. Should a later JAX rename the config, this falls back to the Mosaic interpreter.
"""

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def hlo_interpret_mode() -> Iterator[None]:
    """Inside, every Pallas TPU kernel runs in the HLO interpreter."""
    from jax._src import config

    flag = getattr(config, "pallas_tpu_interpret_mode_context_manager", None)
    if flag is None:  # not this JAX's layout: the public (slower, callback-based) interpreter
        import jax.experimental.pallas.tpu as pltpu

        with pltpu.force_tpu_interpret_mode():
            yield
        return
    prev = flag.swap_local(True)
    try:
        yield
    finally:
        flag.set_local(prev)
