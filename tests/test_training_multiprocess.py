"""Two local processes x 4 devices (jax.distributed on 127.0.0.1) train identically to one process x 8."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

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
def test_two_processes_match_one_process():
    want = run_steps(0, 1)  # this process: 8 simulated devices
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(i), "2"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    line = next(x for x in outs[0][0].splitlines() if x.startswith("RESULT "))
    got = json.loads(line[len("RESULT "):])
    assert got["devices"] == 8 and want["devices"] == 8
    np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-5)
    assert got["checksum"] == pytest.approx(want["checksum"], rel=1e-5)
