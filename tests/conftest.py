"""Test set-up: JAX on the CPU with 8 simulated devices, float32 matmuls, no network."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    flags = (flags + " --xla_force_host_platform_device_count=8").strip()
if "xla_backend_optimization_level" not in flags:
    # Tests need correct programs, not fast ones: skipping LLVM's optimisation passes halves CPU compile time,
    # which dominates this suite. Set the flag yourself to test optimised code.
    flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = flags.strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402

from tests import children  # noqa: E402


@pytest.fixture(autouse=True)
def _no_child_outlives_its_test():
    """A child process a test started (tests/children.py) never outlives the test, even when it fails."""
    yield
    children.kill_leftovers()
