"""Exact resume: a run killed with SIGKILL at a random step and rerun ends with the same parameters as an
uninterrupted run; SIGTERM saves and stops; checkpoints restore on another device count; a resume with a
different config is a clear error."""

import json
import os
import random
import re
import signal
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from t5pegasus.errors import UserError
from t5pegasus.training import mesh as meshlib
from t5pegasus.training import runconfig
from t5pegasus.training.checkpoint import Checkpointer
from t5pegasus.training.loop import train
from tests import children, tiny_run

STEPS = 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_run.write_corpus(tmp_path_factory.mktemp("corpus"))


def overrides(corpus, out, name="run", **extra):
    return tiny_run.overrides(corpus, out, name, **{
        "train.steps": STEPS, "train.log_every": 1, "checkpoint.every": 2, "eval.every": 4, "eval.batches": 1,
        "optim.ema": 0.9, **extra})


def final_params(run_dir, step):
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as c:
        tree = c.restore(run_dir / "checkpoints" / str(step) / "state")
    return {"params": tree["params"], "ema": tree["ema"], "opt": tree["opt_state"], "step": tree["step"]}


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = train(runconfig.load(None, overrides(corpus, out, name="straight", **{"log.tensorboard": True})))
    assert result.final_step == STEPS and result.last_eval is not None
    assert result.checkpoint_steps == [4, 6, 8]  # every 2 steps, the last checkpoint.keep=3 kept
    assert sorted(_finished_checkpoints(result.run_dir)) == [4, 6, 8]
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if x["kind"] == "train"]
    assert len(train_lines) == STEPS and {"loss", "accuracy", "learning_rate", "grad_norm"} <= set(train_lines[-1])
    assert {"tokens_per_s", "step_time", "mfu"} <= set(train_lines[-1])
    return result, final_params(result.run_dir, STEPS)


def _tensorboard_scalars(folder):
    """{tag: [(step, value), ...]} read back from the TensorBoard event files (TFRecord framing)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        at = 0
        while at < len(raw):
            (n,) = struct.unpack("<Q", raw[at:at + 8])
            event = event_pb2.Event.FromString(raw[at + 12:at + 12 + n])
            at += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_tensorboard_events_hold_the_logged_scalars(uninterrupted):
    result, _ = uninterrupted
    scalars = _tensorboard_scalars(result.run_dir / "tensorboard")
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_loss = [(x["step"], x["loss"]) for x in lines if x["kind"] == "train"]
    tags = {t for t in scalars if t.endswith("loss")}
    assert tags, sorted(scalars)
    logged = next(v for t, v in scalars.items() if t.endswith("loss") and "eval" not in t)
    assert [s for s, _ in logged] == [s for s, _ in train_loss]
    np.testing.assert_allclose([v for _, v in logged], [v for _, v in train_loss], rtol=1e-6)


def test_sigterm_saves_and_stops_then_rerun_resumes_there(corpus, tmp_path, uninterrupted):
    _, want = uninterrupted
    # exit 143 (train.stop_exit=signal; the default is 0), and the rerun without the key still resumes
    args = [sys.executable, "-m", "t5pegasus.cli", "pretrain", *overrides(corpus, tmp_path, name="term"),
            "train.stop_exit=signal"]
    run = children.Child(args, tmp_path / "logs", "term")
    children.hold_until([run], lambda: tiny_run.train_lines(tmp_path / "term") >= 3,
                        then=lambda: run.send_signal(signal.SIGTERM))
    [(code, out, err)] = children.finish([run], timeout=240)
    assert code == 143, err[-2000:]
    stopped = int(re.search(r"stopped by SIGTERM at step (\d+)", out).group(1))
    assert 3 <= stopped < STEPS and stopped in _finished_checkpoints(tmp_path / "term")
    result = train(runconfig.load(None, overrides(corpus, tmp_path, name="term")))
    assert result.start_step == stopped and result.final_step == STEPS
    got = final_params(tmp_path / "term", STEPS)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


def test_diverging_run_stops_with_a_clear_error_and_keeps_the_good_checkpoint(corpus, tmp_path):
    from t5pegasus.training.loop import TrainingDiverged

    # a huge learning rate after two good steps: the weights overflow and every later loss is inf/nan
    cfg = runconfig.load(None, overrides(corpus, tmp_path, name="nan", **{
        "optim.points": "{2: 1.0, 3: 1e30}", "optim.clip": 0.0, "train.max_bad_steps": 2,
        "checkpoint.every": 1, "eval.every": 0}))
    with pytest.raises(TrainingDiverged, match=r"not finite for 2 steps in a row") as err:
        train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    events = [x for x in lines if x["kind"] == "event"]
    assert [x["bad_in_a_row"] for x in events] == [1, 2]
    assert [x["step"] for x in events] == [events[0]["step"], events[0]["step"] + 1]
    steps = _finished_checkpoints(tmp_path / "nan")
    # the step that stopped the run is not saved; the message names the newest checkpoint on disk
    assert steps and max(steps) < events[-1]["step"]
    assert f"last good checkpoint is step {max(steps)} in" in str(err.value)


def _finished_checkpoints(run_dir):
    """Step numbers of the complete checkpoints (orbax renames a step's folder to its number once written)."""
    folder = run_dir / "checkpoints"
    return [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []


def test_sigkill_at_random_step_then_rerun_matches(corpus, tmp_path, uninterrupted):
    _, want = uninterrupted
    args = [sys.executable, "-m", "t5pegasus.cli", "pretrain", *overrides(corpus, tmp_path, name="killed")]
    kill_after = random.Random(os.getpid()).randint(3, STEPS - 2)
    run = children.Child(args, tmp_path / "logs", "killed")
    # wait for one finished checkpoint too, so the rerun really resumes (the asynchronous save of a later one
    # may be half written when killed). SIGKILL: no handler runs.
    def logged_when_ready():
        logged = tiny_run.train_lines(tmp_path / "killed")
        return logged if logged >= kill_after and _finished_checkpoints(tmp_path / "killed") else 0

    logged = children.hold_until([run], logged_when_ready, then=run.kill)
    [(code, _, err)] = children.finish([run], timeout=60)
    assert code == -9, err[-2000:]
    result = train(runconfig.load(None, overrides(corpus, tmp_path, name="killed")))
    assert 0 < result.start_step <= logged and result.final_step == STEPS
    got = final_params(tmp_path / "killed", STEPS)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


def test_resume_with_other_settings_is_an_error(corpus, uninterrupted):
    result, _ = uninterrupted
    out = result.run_dir.parent
    with pytest.raises(UserError, match="optim.learning_rate"):
        train(runconfig.load(None, overrides(corpus, out, name="straight", **{"optim.learning_rate": 1e-2})))
    # resumable settings may change: training longer continues from the last checkpoint
    more = train(runconfig.load(None, overrides(corpus, out, name="straight", **{"train.steps": STEPS + 2})))
    assert more.start_step == STEPS and more.final_step == STEPS + 2


@pytest.mark.parametrize("devices", [1, 4])
def test_checkpoint_from_8_devices_restores_on_fewer(uninterrupted, devices):
    from t5pegasus.families import T5Config
    from t5pegasus.training.objectives import make_objective
    from t5pegasus.training.optim import make_optimizer
    from t5pegasus.training.state import state_shardings

    result, want = uninterrupted
    run_dir = result.run_dir
    model_cfg = T5Config.load(run_dir / "model_config.json")
    saved = runconfig.from_dict(__import__("yaml").safe_load((run_dir / "config.yaml").read_text()))
    obj = make_objective("seq2seq", model_cfg)
    tx, _ = make_optimizer(saved.optim, saved.train.steps)
    dummy = obj.dummy_batch(1, {"source": 48, "target": 16})
    mesh = meshlib.make_mesh(-1, 1, 1, devices=jax.devices()[:devices])
    rules = meshlib.rules_for("fsdp")
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract, shardings = state_shardings(lambda k: obj.init(k, dummy), tx, saved.optim.ema, mesh, rules)
        ckpt = Checkpointer(run_dir / "checkpoints")
        state, position = ckpt.restore(STEPS, abstract, shardings)
        ckpt.close()
    leaf = state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
    assert len(leaf.sharding.device_set) == devices
    np.testing.assert_array_equal(np.asarray(state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]),
                                  want["params"]["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"])
    assert int(state.step) == STEPS and isinstance(position, dict)
