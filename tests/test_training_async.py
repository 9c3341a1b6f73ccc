"""The asynchronous host loop: steps read nothing from the devices between sync points (log, eval, checkpoint
steps), batches come from a bounded background producer whose errors surface as themselves, and a run that
diverges between log steps still stops naming the right step and the last good checkpoint."""

import json
import re
import threading
import time

import jax
import jax.numpy as jnp
import pytest
from jax._src import array as jax_array
from jax._src import config as jax_config

from t5pegasus.errors import UserError
from t5pegasus.training import loop as looplib
from t5pegasus.training import runconfig
from t5pegasus.training.prefetch import Prefetcher
from tests import tiny_run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_run.write_corpus(tmp_path_factory.mktemp("corpus"))


def overrides(corpus, out, name, **extra):
    return tiny_run.overrides(corpus, out, name, **{"train.steps": 7, "train.log_every": 3, "checkpoint.every": 100,
                                                    "eval.every": 0, **extra})


@pytest.fixture
def guard_on_cpu(monkeypatch):
    """Make the device-to-host transfer guard bite on the CPU too, where a device buffer is host memory and
    the real guard lets every read through: reading a jax.Array's value raises while the guard in effect in
    this thread disallows it (as it does on an accelerator)."""
    original = jax_array.ArrayImpl._value

    def guarded(self):
        if jax_config.transfer_guard_device_to_host.value in ("disallow", "disallow_explicit"):
            raise RuntimeError("device-to-host transfer under a disallowing guard")
        return original.fget(self)

    monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(guarded))


def test_steps_transfer_nothing_to_the_host_except_at_sync_points(corpus, tmp_path, monkeypatch, guard_on_cpu):
    x = jnp.arange(3) + 1
    with jax.transfer_guard_device_to_host("disallow_explicit"), pytest.raises(RuntimeError, match="guard"):
        jax.device_get(x)  # the guard bites: the test can fail
    reads = []
    real = looplib._host_reads

    def counted():
        reads.append(1)
        return real()

    monkeypatch.setattr(looplib, "_host_reads", counted)
    with jax.transfer_guard_device_to_host("disallow_explicit"):
        result = looplib.train(runconfig.load(None, overrides(corpus, tmp_path, "guarded")))
    assert result.final_step == 7
    lines = [json.loads(s) for s in (tmp_path / "guarded" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["kind"] == "train"]
    assert [x["step"] for x in train_lines] == [3, 6, 7]
    # set-up, the first (compiling) call, the three sync points (steps 3 and 6 log; step 7 logs and saves),
    # teardown: nothing per step
    assert len(reads) == 3 + 3
    for x in train_lines[1:]:
        assert x["data_wait"] >= 0 and x["data_wait"] < x["step_time"]
        assert x["tokens_per_s"] > 0


def test_divergence_between_log_steps_names_its_step_and_saves_nothing_bad(corpus, tmp_path):
    # good steps, then a learning rate that overflows the weights: every later loss is inf/nan. The sync points
    # are steps 4 (checkpoint), 8 (log and checkpoint) and 12; 2 bad steps in a row stop the run at the first
    # sync point after them, which must not save.
    cfg = runconfig.load(None, overrides(corpus, tmp_path, "nan", **{
        "optim.points": "{2: 1.0, 3: 1e30}", "optim.clip": 0.0, "train.max_bad_steps": 2, "train.steps": 12,
        "train.log_every": 8, "checkpoint.every": 4, "checkpoint.asynchronous": False}))
    with pytest.raises(looplib.TrainingDiverged, match=r"not finite for 2 steps in a row") as err:
        looplib.train(cfg)
    diverged = int(re.search(r"last at step (\d+)", str(err.value)).group(1))
    lines = [json.loads(s) for s in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    event = [x for x in lines if x["kind"] == "event"][-1]
    first_bad = event["step"] - event["nonfinite_steps"] + 1  # the window's bad steps run up to the sync point
    assert diverged == first_bad + 1 and event["bad_in_a_row"] == event["nonfinite_steps"] >= 2
    assert event["step"] > diverged  # seen later, at a sync point
    saved = sorted(int(p.name) for p in (tmp_path / "nan" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < diverged
    assert f"last good checkpoint is step {max(saved)} in" in str(err.value)


def test_prefetcher_keeps_order_and_stays_bounded():
    made = []

    def produce():
        if len(made) == 20:
            raise StopIteration
        made.append(len(made))
        return made[-1]

    with Prefetcher(produce, depth=2) as it:
        time.sleep(0.3)
        assert len(made) <= 3  # two waiting, one made and blocked on the full queue
        assert list(it) == list(range(20))
        assert it.waited >= 0


def test_producer_errors_surface_as_themselves():
    calls = []

    def produce():
        calls.append(1)
        if len(calls) == 3:
            raise UserError("the dataset's batches lack encoder_ids")
        return len(calls)

    it = Prefetcher(produce, depth=2)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(UserError, match="lack encoder_ids"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    it.close()


def test_close_stops_a_blocked_producer():
    def produce():
        return 0

    it = Prefetcher(produce, depth=1, name="test-prefetch")
    time.sleep(0.1)
    it.close()
    assert not any(t.name == "test-prefetch" for t in threading.enumerate())
