"""xla_options: the train step's CPU compiler option is probed, not assumed, and XLA_FLAGS overrides it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from t5pegasus import xla_options


def test_unknown_option_is_refused_without_aborting():
    assert not xla_options._accepted("xla_cpu_no_such_option_here", False)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU-backend option")
def test_cpu_train_step_turns_the_concurrency_scheduler_off(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert xla_options._accepted(xla_options.SEQUENTIAL_CPU_SCHEDULE, False)
    assert xla_options.train_step_options() == {xla_options.SEQUENTIAL_CPU_SCHEDULE: False}
    step = jax.jit(lambda x: x * 2, donate_argnums=(0,), compiler_options=xla_options.train_step_options())
    assert float(step(jnp.ones(()))) == 2.0


def test_xla_flags_naming_the_option_wins(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{xla_options.SEQUENTIAL_CPU_SCHEDULE}=true")
    assert xla_options.train_step_options() == {}
