"""When a run joins jax.distributed: explicit flags, SLURM / Open MPI / TPU-pod environments, or never."""

import jax
import pytest

from t5pegasus.errors import UserError
from t5pegasus.training import distributed

CLUSTER_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


@pytest.fixture
def calls(monkeypatch):
    """Record jax.distributed.initialize calls instead of making them."""
    seen = []
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: seen.append(kw))
    return seen


def test_single_process_does_nothing(calls, monkeypatch):
    assert distributed.maybe_initialize() is False
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "only-one-host")
    assert distributed.maybe_initialize() is False and calls == []


@pytest.mark.parametrize("name,value", [("SLURM_NTASKS", "4"), ("OMPI_COMM_WORLD_SIZE", "2"),
                                        ("TPU_WORKER_HOSTNAMES", "t1k-0,t1k-1")])
def test_cluster_environments_let_jax_detect_the_rest(calls, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert distributed.maybe_initialize() is True
    assert calls == [{}]  # JAX's own cluster detection fills in coordinator, process count and id


def test_explicit_flags_are_passed_through(calls):
    assert distributed.maybe_initialize("10.0.0.1:1234", 2, 1, local_device_ids=[0, 1]) is True
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1,
                      "local_device_ids": [0, 1]}]


def test_incomplete_flags_and_failures_are_one_clear_error(calls, monkeypatch):
    with pytest.raises(UserError, match="needs distributed.num_processes and distributed.process_id"):
        distributed.maybe_initialize("10.0.0.1:1234")

    def refuse(**kw):
        raise RuntimeError("connection refused")

    monkeypatch.setattr(jax.distributed, "initialize", refuse)
    with pytest.raises(UserError, match="could not join the distributed run .connection refused."):
        distributed.maybe_initialize("10.0.0.1:1234", 2, 0)


def test_the_heartbeat_timeout_bounds_the_wait_for_a_dead_peer(calls):
    assert distributed.maybe_initialize("10.0.0.1:1234", 2, 0, heartbeat_timeout=10) is True
    assert calls[-1]["heartbeat_timeout_seconds"] == 10 == calls[-1]["shutdown_timeout_seconds"]
    with pytest.raises(UserError, match="heartbeat_timeout must be at least 1 second"):
        distributed.maybe_initialize("10.0.0.1:1234", 2, 0, heartbeat_timeout=0)
    from t5pegasus.training import runconfig

    with pytest.raises(UserError, match="stop_check_every must be at least 1"):
        runconfig.load(None, ["distributed.stop_check_every=0"])


def test_one_process_agrees_with_itself():
    assert [distributed.agree_on_stop(x) for x in (None, "SIGTERM", "SIGINT")] == [None, "SIGTERM", "SIGINT"]
