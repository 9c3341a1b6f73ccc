"""Metrics: MFU (model FLOPs over the platform peak), a JSONL log, TensorBoard events, a live progress line.

Only process 0 writes. The progress display (rich) is shown on a terminal; in CI or when output is piped,
one plain line per logging interval is printed instead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t5pegasus.errors import UserError


def measure_matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large square matmul on the default device (best of `repeats`)."""
    a = jnp.ones((n, n), dtype)
    b = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def platform_peak(dtype: str, configured: float = 0.0) -> float:
    """Peak FLOP/s of everything this process drives: the CPU host (its devices share the cores), or
    per-device peak x local devices on an accelerator. `configured` (>0) replaces the measurement."""
    per_unit = configured or measure_matmul_peak(dtype)
    return per_unit if jax.default_backend() == "cpu" else per_unit * jax.local_device_count()


def step_flops(fn: Callable[..., Any], *args: Any) -> float:
    """FLOPs XLA counts for `fn(*args)` (e.g. a forward pass; a train step is ~3x its forward)."""
    try:
        cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    except Exception:  # some backends have no cost model
        return 0.0
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def use_progress(setting: str) -> bool:
    if setting in ("on", "off"):
        return setting == "on"
    return sys.stdout.isatty() and not os.environ.get("CI")


class MetricsWriteError(UserError):
    """metrics.jsonl or the TensorBoard events could not be written (disk full, a vanished folder): the run
    stops with one line."""

    def __init__(self, kind: str, step: int, path: Path, error: OSError) -> None:
        super().__init__(f"could not write the {kind} metrics of step {step} to {path} ({error.strerror or error}); "
                         "free space or fix the folder, then rerun the same command to resume from the last "
                         "checkpoint")


class MetricsLog:
    """Writes scalars to `run_dir/metrics.jsonl` and TensorBoard (`run_dir/tensorboard`), and shows progress."""

    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int, jsonl: bool = True,
                 tensorboard: bool = True, progress: str = "auto") -> None:
        self.enabled = jax.process_index() == 0
        self.jsonl = None
        self.tb = None
        self.live = None
        self.total = total_steps
        if not self.enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl_path = run_dir / "metrics.jsonl"
        if jsonl:
            self.jsonl = open(self._jsonl_path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb_path = run_dir / "tensorboard"
            self.tb = SummaryWriter(str(self._tb_path))
        if use_progress(progress):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.live = Progress(TextColumn("[bold]pretrain"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self.task = self.live.add_task("train", total=total_steps, completed=start_step, info="compiling…")
            self.live.start()

    def write(self, step: int, kind: str, values: dict[str, float]) -> None:
        """Record `values` (kind: train / eval / event) at `step`."""
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, int | float | np.generic | np.ndarray) else v)
                 for k, v in values.items()}
        if self.jsonl:
            try:
                self.jsonl.write(json.dumps({"step": step, "kind": kind, "time": time.time(), **clean}) + "\n")
                self.jsonl.flush()
            except OSError as e:
                self._drop_jsonl()
                raise MetricsWriteError(kind, step, self._jsonl_path, e) from None
        if self.tb:
            try:
                for k, v in clean.items():
                    if isinstance(v, float):
                        self.tb.add_scalar(f"{kind}/{k}", v, step)
                self.tb.flush()
            except OSError as e:
                self._drop_tensorboard()
                raise MetricsWriteError(kind, step, self._tb_path, e) from None
        line = " ".join(_fmt(k, v) for k, v in clean.items() if k in SHOWN)
        if self.live is not None:
            if kind == "train":
                self.live.update(self.task, completed=step, info=line)
            else:
                self.live.console.print(f"step {step} {kind}: {line}")
        else:
            print(f"step {step}/{self.total} {kind}: {line}", flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.live is not None:
            self.live.console.print(text)
        else:
            print(text, flush=True)

    def _drop_jsonl(self) -> None:
        """Close metrics.jsonl after a failed write, dropping what its buffer still holds (flushing it again
        would fail again, at exit, with a traceback)."""
        jsonl, self.jsonl = self.jsonl, None
        try:
            jsonl.close()
        except OSError:
            pass

    def _drop_tensorboard(self) -> None:
        """Close the TensorBoard writer. When what it still buffers cannot be written (every `write` flushed,
        so that is what failed just now), tensorboardX would try again at exit and print a traceback: its
        writer threads are stopped and its files marked closed instead (tensorboardX internals, so anything
        unexpected leaves them as they are)."""
        tb, self.tb = self.tb, None
        try:
            tb.close()
        except OSError:
            for writer in (tb.all_writers or {}).values():
                try:
                    events = writer.event_writer
                    if not events._closed:
                        events._worker.stop()  # it returns at the stop signal, writing nothing more
                        events._closed = True  # skips the flush of close() and of its exit hook
                except Exception:  # noqa: BLE001 - a best effort on the way out
                    pass

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
        if self.jsonl:
            self._drop_jsonl()
        if self.tb:
            self._drop_tensorboard()


SHOWN = ("loss", "accuracy", "learning_rate", "grad_norm", "tokens_per_s", "step_time", "data_wait", "mfu",
         "skipped", "nonfinite_loss", "bad_in_a_row", "nonfinite_steps", "seq2seq_loss", "similarity_loss")


def _fmt(k: str, v: Any) -> str:
    short = {"learning_rate": "lr", "tokens_per_s": "tok/s", "step_time": "s/step", "accuracy": "acc",
             "grad_norm": "|g|", "nonfinite_loss": "not finite, update skipped: last loss",
             "bad_in_a_row": "in a row", "nonfinite_steps": "steps"}.get(k, k)
    if k in ("tokens_per_s",):
        return f"{short}={v:,.0f}"
    if k == "data_wait":  # seconds per step the loop waited for its next batch
        return f"data_wait={1000 * v:.1f}ms"
    if k == "mfu":
        return f"mfu={100 * v:.1f}%"
    if k in ("learning_rate",):
        return f"{short}={v:.2e}"
    return f"{short}={v:.4g}" if isinstance(v, float) else f"{short}={v}"
