"""A checkpoint that cannot be written (disk full, a file-size limit) stops `t5pegasus pretrain` with one line
naming the folder, the failed step and the last good step, exit 2; the partial checkpoint never counts, and
once there is room the same command resumes from the last good step."""

import os
import shutil
import subprocess
import sys
import threading
import uuid

import pytest

from t5pegasus.pretrain.corpora import iter_peoples_daily_documents
from t5pegasus.training import runconfig
from t5pegasus.training.loop import train
from t5pegasus.training.run_folder import RunFolder

STEPS = 6  # checkpoints every 2 steps: a good one at 2, the failing one at 4


def settings(corpus, out, **extra):
    from tests.test_training_resume import overrides

    return overrides(corpus, out, name="disk", **{"train.steps": STEPS, "eval.every": 0, **extra})


@pytest.fixture(scope="module")
def at_step_2(tmp_path_factory):
    """(corpus folder, a run folder whose only checkpoint is step 2): trained here, the data cached."""
    corpus = tmp_path_factory.mktemp("disk-corpus")
    docs = [doc for _, doc in zip(range(40), iter_peoples_daily_documents(), strict=False)]
    (corpus / "docs.txt").write_text("\n\n".join(docs), encoding="utf-8")
    out = tmp_path_factory.mktemp("disk-runs")
    result = train(runconfig.load(None, settings(corpus, out, **{"train.steps": 2})))
    assert result.checkpoint_steps == [2]
    return corpus, out / "disk"


# the kernel refuses writes past 64 KiB (EFBIG, with SIGXFSZ ignored); a checkpoint's data files are larger
LIMITED = """import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
sys.argv = ["t5pegasus", *sys.argv[1:]]
runpy.run_module("t5pegasus.cli", run_name="__main__")
"""


def pretrain(corpus, out, limit_file_size=False, **extra):
    """`t5pegasus pretrain` in a subprocess with the run folder under `out`: (exit code, stdout, stderr)."""
    start = ["-c", LIMITED] if limit_file_size else ["-m", "t5pegasus.cli"]
    proc = subprocess.run([sys.executable, *start, "pretrain", *settings(corpus, out, **extra)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))
    return proc.returncode, proc.stdout, proc.stderr


def assert_stops_cleanly_then_resumes(corpus, out, free, reason, limit_file_size=False):
    """Run: exit 2, one line; then `free()`, rerun: resumes from step 2 and finishes."""
    code, _, err = pretrain(corpus, out, limit_file_size)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1, err[-4000:]
    assert lines[0].startswith(f"t5pegasus pretrain: error: could not write the checkpoint of step 4 in "
                               f"{out / 'disk' / 'checkpoints'} ({reason}") and "Traceback" not in err
    assert "the last good checkpoint is step 2" in lines[0] and "rerun the same command" in lines[0]
    assert RunFolder(out / "disk").steps() == [2]  # the cut-short step 4 is not a checkpoint
    free()
    code, stdout, err = pretrain(corpus, out)
    assert code == 0, err[-3000:]
    assert "from step 2" in stdout and RunFolder(out / "disk").steps()[-1] == STEPS


def test_a_checkpoint_past_the_file_size_limit_stops_with_one_line_and_resumes(at_step_2, tmp_path):
    corpus, run = at_step_2
    shutil.copytree(run, tmp_path / "disk")
    assert_stops_cleanly_then_resumes(corpus, tmp_path, lambda: None, "File too large", limit_file_size=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs (skipped where mounting needs privileges this test does not have)."""
    disk = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_disk_full_at_a_checkpoint_stops_with_one_line_and_resumes_once_freed(at_step_2, small_disk):
    corpus, run = at_step_2
    shutil.copytree(run, small_disk / "disk")
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # leave 256 KiB: room for the logs and configs, not for a checkpoint
        stat = os.statvfs(small_disk)
        f.write(b"\0" * (stat.f_bavail * stat.f_frsize - 256 * 1024))
    assert_stops_cleanly_then_resumes(corpus, small_disk, filler.unlink, "No space left on device")


def test_a_blocked_checkpoint_folder_is_one_line_and_other_errors_keep_their_traceback(tmp_path):
    import jax
    import jax.numpy as jnp
    from flax import struct

    from t5pegasus.training.checkpoint import Checkpointer, CheckpointWriteError

    @struct.dataclass
    class State:
        step: jax.Array
        w: jax.Array

    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(State(jnp.int32(1), jnp.ones(64)), {"batches": 1})
    ckpt.wait()
    shutil.rmtree(tmp_path / "checkpoints")
    (tmp_path / "checkpoints").write_text("a file where the folder was")
    with pytest.raises(CheckpointWriteError, match=r"could not write the checkpoint of step 2 in .*checkpoints "
                                                   r"\(Not a directory\); no checkpoint was finished before it"):
        ckpt.save(State(jnp.int32(2), jnp.ones(64)), {"batches": 2})
        ckpt.wait()
    ckpt.close()
    # orbax's commit threads that waited for the failed operation are released (else the exit waits minutes)
    waiting = [t for t in threading.enumerate() if type(t).__name__ == "_SignalingThread"]
    for t in waiting:  # the plain Thread.join: orbax's own raises CancelledError on a cancelled thread
        threading.Thread.join(t, timeout=10)
    assert not [t for t in waiting if t.is_alive()]
    bug = ValueError("a tree that does not match")
    assert ckpt._write_error(bug, 3) is bug  # not a write failure: it keeps its traceback


def test_metrics_that_cannot_be_written_stop_the_run_with_one_line(at_step_2, tmp_path):
    corpus, run = at_step_2
    shutil.copytree(run, tmp_path / "disk")
    metrics = tmp_path / "disk" / "metrics.jsonl"
    metrics.unlink()
    metrics.symlink_to("/dev/full")  # opens for appending; every write fails with ENOSPC
    code, _, err = pretrain(corpus, tmp_path)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-4000:]
    assert lines[0].startswith("t5pegasus pretrain: error: could not write the train metrics of step 3 to "
                               f"{metrics} (No space left on device)") and "rerun the same command" in lines[0]
    assert RunFolder(tmp_path / "disk").steps() == [2]  # nothing a user had is lost


def test_tensorboard_events_that_cannot_be_written_stop_the_run_with_one_line(at_step_2, tmp_path, small_disk):
    """The events folder on a full disk (metrics.jsonl still writable): one line naming it, no traceback from
    tensorboardX's exit-time flush, and the checkpoint intact."""
    corpus, run = at_step_2
    shutil.copytree(run, tmp_path / "disk")
    events = tmp_path / "disk" / "tensorboard"  # the tiny runs write none, this one does
    (small_disk / "tensorboard").mkdir()
    events.symlink_to(small_disk / "tensorboard")
    with open(small_disk / "filler", "wb") as f:  # fill it: the first flush of an event fails
        stat = os.statvfs(small_disk)
        f.write(b"\0" * (stat.f_bavail * stat.f_frsize))
    code, _, err = pretrain(corpus, tmp_path, **{"log.tensorboard": True})
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-4000:]
    assert lines[0].startswith("t5pegasus pretrain: error: could not write the train metrics of step 3 to "
                               f"{events} (No space left on device)") and "rerun the same command" in lines[0]
    assert RunFolder(tmp_path / "disk").steps() == [2]
