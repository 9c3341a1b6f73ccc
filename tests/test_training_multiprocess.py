"""Two local processes x 4 devices (jax.distributed on 127.0.0.1) train identically to one process x 8: the
train step, and the whole `t5pegasus pretrain` loop (data shards, evaluation, checkpoints, EMA) bit for bit,
with SIGTERM to one process, SIGKILL of both, a dead peer, and resumes across process counts and meshes."""

import json
import os
import re
import shutil
import signal
import socket
import sys
import textwrap
import time

import numpy as np
import pytest

from tests import children, tiny_run

WORKER = textwrap.dedent('''
    import json, sys
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from t5pegasus.training.distributed import maybe_initialize
    port, pid, nproc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if nproc > 1:
        assert maybe_initialize(f"127.0.0.1:{port}", nproc, pid)
    sys.path.insert(0, "tests")
    from test_training_multiprocess import run_steps
    out = run_steps(jax.process_index(), jax.process_count())
    if jax.process_index() == 0:
        print("RESULT " + json.dumps(out))
''')


def run_steps(process_index, process_count, steps=3):
    """A few fsdp train steps on a fixed global batch; this process feeds its own rows. Returns losses and a
    parameter checksum."""
    import flax.linen as nn
    import jax

    import t5pegasus as tp
    from t5pegasus.training import mesh as meshlib
    from t5pegasus.training.objectives import make_objective
    from t5pegasus.training.optim import OptimConfig, make_optimizer
    from t5pegasus.training.state import init_state, state_shardings
    from t5pegasus.training.step import jit_train_step, make_train_step

    obj = make_objective("seq2seq", tp.T5Config.preset("tiny"))
    tx, schedule = make_optimizer(OptimConfig(learning_rate=3e-3, schedule="constant"))
    mesh = meshlib.make_mesh(2, 4, 1)
    rules = meshlib.rules_for("fsdp")
    init = lambda k: obj.init(k, obj.dummy_batch(1, {"source": 12, "target": 8}))
    rng = np.random.default_rng(0)
    losses = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        _, shardings = state_shardings(init, tx, 0.0, mesh, rules)
        state = init_state(init, tx, 0.0, 0, shardings)
        bsh = meshlib.batch_sharding(mesh, rules)
        step = jit_train_step(make_train_step(obj, tx, schedule), shardings, bsh)
        for _ in range(steps):
            full = {"encoder_ids": rng.integers(1, 128, (8, 12)), "encoder_mask": np.ones((8, 12)),
                    "decoder_ids": rng.integers(1, 128, (8, 8)), "targets": rng.integers(1, 128, (8, 8)),
                    "weights": np.ones((8, 8))}
            per = 8 // process_count
            local = {k: v[process_index * per:(process_index + 1) * per].astype(np.int32) for k, v in full.items()}
            batch = {k: jax.make_array_from_process_local_data(bsh, v) for k, v in local.items()}
            state, m = step(state, batch)
            losses.append(float(m["loss"]))
        from jax.experimental import multihost_utils

        params = multihost_utils.process_allgather(state.params, tiled=True)
    checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(params)))
    return {"losses": losses, "checksum": checksum, "devices": jax.device_count()}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    want = run_steps(0, 1)  # this process: 8 simulated devices
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    procs = [children.Child([sys.executable, "-c", WORKER, str(port), str(i), "2"], tmp_path, f"worker{i}", env)
             for i in range(2)]
    ends = children.finish(procs, timeout=180)
    for code, _, err in ends:
        assert code == 0, err[-3000:]
    line = next(x for x in ends[0][1].splitlines() if x.startswith("RESULT "))
    got = json.loads(line[len("RESULT "):])
    assert got["devices"] == 8 and want["devices"] == 8
    np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-5)
    assert got["checksum"] == pytest.approx(want["checksum"], rel=1e-5)


# --- the whole loop (`t5pegasus pretrain`: data shards, evaluation, checkpoints, EMA, signals) -------------
#
# Every run below is a `t5pegasus pretrain` subprocess that joins jax.distributed, the one-process reference
# too (num_processes=1): on the CPU a process outside jax.distributed sums over its devices with XLA's
# in-process collectives, inside it with gloo (as every multi-process run does), and the two add in another
# order (about 1e-7 apart); on a GPU or TPU slice the collectives are the same for any process count.

LOOP_STEPS = 6  # checkpoints every 2 steps (all 3 kept), evaluation every 3


@pytest.fixture(scope="module")
def loop_runs(tmp_path_factory):
    """(corpus folder, runs folder), with the prepared data cached so each run starts at once."""
    from t5pegasus.pretrain.corpora import iter_peoples_daily_documents
    from t5pegasus.training import runconfig
    from t5pegasus.training.data import prepare

    corpus = tmp_path_factory.mktemp("mp-corpus")
    docs = [doc for _, doc in zip(range(40), iter_peoples_daily_documents(), strict=False)]
    (corpus / "docs.txt").write_text("\n\n".join(docs), encoding="utf-8")
    prepare(runconfig.load(None, loop_overrides(corpus, corpus)).data, say=lambda *_: None)
    return corpus, tmp_path_factory.mktemp("mp-runs")


def loop_overrides(corpus, out, name="run", **extra):
    from tests.test_training_resume import overrides

    values = {"train.steps": LOOP_STEPS, "eval.every": 3, "model.dropout_rate": 0.1,
              "distributed.heartbeat_timeout": 10, "distributed.stop_check_every": 2, **extra}
    return overrides(corpus, out, name=name, **values)


def launch(loop_runs, name, processes, **extra):
    """`t5pegasus pretrain` as `processes` local processes x 8/processes simulated devices (`children.Child`,
    logs in `<runs>/logs/<name>-<processes>p-<process>-<launch time>.*`: a rerun writes its own)."""
    corpus, out = loop_runs
    port = _free_port()
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={8 // processes}")
    args = [sys.executable, "-m", "t5pegasus.cli", "pretrain", *loop_overrides(corpus, out, name=name, **extra),
            f"distributed.coordinator=127.0.0.1:{port}", f"distributed.num_processes={processes}"]
    logs = out / "logs"
    return [children.Child([*args, f"distributed.process_id={i}"], logs, f"{name}-{processes}p-{i}-{time.time_ns()}",
                           env) for i in range(processes)]


def run_loop(loop_runs, name, processes, **extra):
    ends = children.finish(launch(loop_runs, name, processes, **extra))
    for code, _, err in ends:
        assert code == 0, err[-3000:]
    assert f"8 cpu device(s) in {processes} process(es)" in ends[0][1] or "resuming" in ends[0][1], ends[0][1]
    return ends


def logged(run_dir, kind, fields=("loss", "accuracy", "grad_norm")):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(x["step"], *(x[f] for f in fields if f in x)) for x in lines if x["kind"] == kind]


def saved_state(run_dir, step=LOOP_STEPS):
    """The whole train state of checkpoint `step` on one device, whatever processes and mesh wrote it."""
    import jax
    import orbax.checkpoint as ocp

    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    path = run_dir / "checkpoints" / str(step) / "state"
    with ocp.StandardCheckpointer() as c:
        tree = c.metadata(path).item_metadata.tree
        return c.restore(path, jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                            tree))


def assert_same_checkpoint(a, b, step=LOOP_STEPS, **close):
    """Params, EMA, optimiser state and step of two runs' checkpoints: equal bit for bit (or `close`)."""
    import jax

    got, want = saved_state(a, step), saved_state(b, step)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        if close:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), **close)
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def one_process(loop_runs):
    run_loop(loop_runs, "one", 1)
    return loop_runs[1] / "one"


@pytest.mark.slow
def test_two_processes_run_the_loop_bit_for_bit_like_one(loop_runs, one_process):
    run_loop(loop_runs, "two", 2)
    two = loop_runs[1] / "two"
    assert sorted(int(p.name) for p in (two / "checkpoints").iterdir()) == [2, 4, 6]
    assert_same_checkpoint(two, one_process)  # params, EMA, optimiser state (float32, dropout 0.1)
    assert logged(two, "train") == logged(one_process, "train")
    assert logged(two, "eval", ("loss", "accuracy", "tokens")) == logged(one_process, "eval", ("loss", "accuracy",
                                                                                                 "tokens"))
    assert len(logged(two, "eval")) == 2


def train_lines_when(procs, run_dir, ready, then=None):
    """Run the processes a slice at a time until `ready(train lines in metrics.jsonl)` (process 0 writes it),
    then call `then()` while they are stopped."""
    children.hold_until(procs, lambda: ready(tiny_run.train_lines(run_dir)), then=then)


def finished_steps(run_dir):
    from t5pegasus.training.run_folder import RunFolder

    return RunFolder(run_dir).steps()


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_one_step_and_the_rerun_resumes(loop_runs, one_process):
    run_dir = loop_runs[1] / "term"
    procs = launch(loop_runs, "term", 2)
    # the other process hears of it only through the agreement
    train_lines_when(procs, run_dir, lambda n: n >= 1, then=lambda: procs[1].send_signal(signal.SIGTERM))
    sent = time.time()
    ends = children.finish(procs, timeout=120)
    assert time.time() - sent < 60
    assert [code for code, _, _ in ends] == [0, 0], [err[-2000:] for _, _, err in ends]  # a clean stop
    stopped = int(re.search(r"stopped by SIGTERM at step (\d+)", ends[0][1]).group(1))
    assert stopped % 2 == 0 and stopped < LOOP_STEPS  # an agreement step (distributed.stop_check_every=2)
    assert max(finished_steps(run_dir)) == stopped
    position = json.loads((run_dir / "checkpoints" / str(stopped) / "data" / "metadata").read_text())
    assert position == {"position": {"batches": stopped}}  # one global position
    rerun = run_loop(loop_runs, "term", 2)
    assert f"from step {stopped}" in rerun[0][1]
    assert_same_checkpoint(run_dir, one_process)


@pytest.mark.slow
def test_sigkill_of_both_processes_then_the_run_resumes_on_one_process(loop_runs, one_process):
    run_dir = loop_runs[1] / "killed"
    procs = launch(loop_runs, "killed", 2)
    # SIGKILL: no handler runs; wait for one finished checkpoint so the rerun really resumes
    train_lines_when(procs, run_dir, lambda n: n >= 3 and finished_steps(run_dir),
                     then=lambda: [p.kill() for p in procs])
    assert [code for code, _, _ in children.finish(procs)] == [-9, -9]
    resumed_from = max(finished_steps(run_dir))
    rerun = run_loop(loop_runs, "killed", 1)  # a 2-process checkpoint, 1 process x 8 devices, same mesh
    assert f"from step {resumed_from}" in rerun[0][1]
    assert_same_checkpoint(run_dir, one_process)


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_on_two_processes_and_another_mesh(loop_runs, one_process):
    run_dir = loop_runs[1] / "grown"
    shutil.copytree(one_process, run_dir)
    for step in (4, 6):
        shutil.rmtree(run_dir / "checkpoints" / str(step))
    rerun = run_loop(loop_runs, "grown", 2, **{"mesh.data": 4, "mesh.fsdp": 2})
    assert "from step 2" in rerun[0][1]
    # another mesh sums gradients in another order (1e-7 apart); batches from another data position would
    # move the weights by about the learning rate (3e-3)
    assert_same_checkpoint(run_dir, one_process, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_dead_process_stops_the_other_within_the_heartbeat_timeout(loop_runs):
    run_dir = loop_runs[1] / "dead"
    procs = launch(loop_runs, "dead", 2, **{"train.steps": 500})
    train_lines_when(procs, run_dir, lambda n: n >= 1, then=procs[1].kill)
    killed = time.time()
    code, _, err = children.finish(procs, timeout=120)[0]
    assert time.time() - killed < 10 + 30  # distributed.heartbeat_timeout=10, and time to notice
    assert code != 0 and "another task died" in err, err[-2000:]
    assert logged(run_dir, "train")[-1][0] < 500
