"""Child processes of the tests (`t5pegasus pretrain` runs and the like), made safe to wait on.

- A child writes its stdout and stderr to files, never to pipes: a test that polls a run without reading its
  pipes would block the child forever once 64 KiB of output filled one.
- Every wait is bounded; a child still running when its test ends is killed (the autouse fixture in
  conftest.py calls `kill_leftovers`), so one failed test cannot leave a run behind that holds a port or the CPU.
- `hold_until` runs children in short slices (SIGCONT, a few ms, SIGSTOP) and checks a condition while they
  are stopped, so a test signals a run at the point it chose however fast the machine is: a tiny run can
  otherwise finish between two polls, and a signal meant for step 3 arrive after the last step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_ALIVE: list[Child] = []


class Child:
    """One child process whose output goes to `<folder>/<name>.stdout` and `.stderr`."""

    def __init__(self, args: Sequence[str], folder: Path, name: str, env: dict[str, str] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = folder / f"{name}.stdout", folder / f"{name}.stderr"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         env=env or dict(os.environ))
        _ALIVE.append(self)

    def poll(self) -> int | None:
        return self.proc.poll()

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def tail(self, n: int = 3000) -> str:
        return f"[exit {self.proc.returncode}] {self.stderr()[-n:]}"


def finish(children: Sequence[Child], timeout: float = 300.0) -> list[tuple[int, str, str]]:
    """[(returncode, stdout, stderr)] of every child once all have ended; past `timeout` seconds (for all
    together) every child is killed and the test fails with their stderr tails."""
    deadline = time.monotonic() + timeout
    try:
        for c in children:
            c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for c in children:
            c.send_signal(signal.SIGCONT)
            c.kill()
        for c in children:
            c.proc.wait(timeout=30)
        raise AssertionError(f"still running after {timeout:.0f} s, killed: {[c.tail() for c in children]}") \
            from None
    return [(c.proc.returncode, c.stdout(), c.stderr()) for c in children]


def hold_until(children: Sequence[Child], ready: Callable[[], Any], then: Callable[[], None] | None = None,
               timeout: float = 240.0, slice_s: float = 0.01) -> Any:
    """Run `children` a slice at a time until `ready()` (checked while they are stopped) is truthy; call
    `then()` while they are still stopped (send a signal: it is handled as soon as they continue), continue
    them, and return what `ready()` gave. Fails the test if a child ends first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for c in children:
                c.send_signal(signal.SIGCONT)
            time.sleep(slice_s)
            for c in children:
                c.send_signal(signal.SIGSTOP)
            _wait_stopped(children)
            ended = [c for c in children if c.poll() is not None]
            if ended:
                raise AssertionError(f"a child ended before the condition held: {[c.tail() for c in ended]}")
            got = ready()
            if got:
                if then is not None:
                    then()
                return got
        raise AssertionError(f"the condition did not hold within {timeout:.0f} s: {[c.tail() for c in children]}")
    finally:
        for c in children:
            c.send_signal(signal.SIGCONT)


def _wait_stopped(children: Sequence[Child], limit: float = 1.0) -> None:
    """Until every running child is in the stopped state ('T' in /proc/PID/stat), at most `limit` seconds."""
    deadline = time.monotonic() + limit
    for c in children:
        stat = Path(f"/proc/{c.proc.pid}/stat")
        while time.monotonic() < deadline and c.poll() is None:
            try:
                if stat.read_text().rsplit(")", 1)[1].split()[0] in ("T", "t", "Z"):
                    break
            except (OSError, IndexError):
                break
            time.sleep(0.001)


def kill_leftovers() -> None:
    """Kill every child still running (called after each test)."""
    while _ALIVE:
        c = _ALIVE.pop()
        if c.poll() is None:
            c.send_signal(signal.SIGCONT)
            c.kill()
            try:
                c.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
