"""The training loop: data -> sharded state -> jitted steps, with checkpoints, metrics, evaluation, resume.

`train(cfg)` is a function of (config, data, seed): rerunning it after an interruption resumes from the
latest checkpoint (state, RNG and the global data position) and follows the same trajectory, on any process
count: every process feeds its rows of the one global batch (`mesh.process_rows`), and a stop request on any
process is agreed by all at a step boundary (`_agreed_stop`).

The host never waits on a step: batches are made and put on the devices ahead on a background thread
(`prefetch.Prefetcher`), each step adds its metrics to device-side window sums (`step.with_window_sums`), and
the host reads those only at its sync points (log, evaluation and checkpoint steps, a stop), where it also
checks the non-finite counters before anything is saved. `_host_reads()` marks every device-to-host read.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from t5pegasus.errors import UserError
from t5pegasus.training import mesh as meshlib
from t5pegasus.training.checkpoint import Checkpointer
from t5pegasus.training.data import PreparedData
from t5pegasus.training.distributed import agree_on_stop, maybe_initialize
from t5pegasus.training.metrics import MetricsLog, platform_peak, step_flops
from t5pegasus.training.objectives import (
    KINDS,
    Objective,
    batch_lengths,
    check_labels,
    check_objective,
    make_objective,
    to_model_batch,
)
from t5pegasus.training.optim import make_optimizer
from t5pegasus.training.prefetch import Prefetcher
from t5pegasus.training.run_folder import RunFolder
from t5pegasus.training.runconfig import STOP_EXIT_CODES, RunConfig, resume_mismatches
from t5pegasus.training.state import TrainState, init_state, state_from_params, state_shardings
from t5pegasus.training.step import (
    AVERAGED,
    jit_train_step,
    make_eval_step,
    make_train_step,
    window_sums,
    with_window_sums,
)

PREFETCH = 2  # batches made and placed on the devices ahead of the step that uses them


class TrainingDiverged(UserError):
    """The loss was not finite for too many steps in a row."""


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    start_step: int
    final_step: int
    interrupted: str | None  # signal name when stopped by SIGTERM/SIGINT
    last_train: dict[str, float]
    last_eval: dict[str, float] | None
    checkpoint_steps: list[int]
    state: TrainState | None = None
    exit_code: int = 0  # what the command exits with: 0, or train.stop_exit's code when a signal stopped it


class _StopSignals:
    """SIGTERM/SIGINT set a flag (the loop saves a checkpoint and stops); a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def vocab_rows(tokens: int) -> int:
    """Embedding rows for a tokenizer of `tokens` tokens: rounded up to a multiple of 128, so any tensor split
    divides them."""
    return int(math.ceil(tokens / 128) * 128)


def _model_fields(cfg: RunConfig, data: Any) -> dict[str, Any]:
    """Vocab size (`vocab_rows`) and the special ids the data's tokenizer fills, by the family's record; fields
    the run config sets itself are kept."""
    wanted = {"vocab_size": vocab_rows(data.vocab_size), **cfg.family.special_ids(data.special_ids)}
    return {k: v for k, v in wanted.items() if k not in cfg.model}


def _check_resume(run: RunFolder, cfg: RunConfig, has_checkpoint: bool) -> None:
    saved = run.run_config()
    if has_checkpoint and saved is not None:
        diffs = resume_mismatches(saved, cfg.to_dict())
        if diffs:
            raise UserError(f"run {run.path} has checkpoints from a different config ({'; '.join(diffs)}); "
                            f"resume with the same settings, or start a new run with name=NEW_NAME")
    if jax.process_index() == 0:
        run.write_run_config(cfg.to_yaml())


def _check_data_task(cfg: RunConfig) -> None:
    """A corpus build must make the examples the objective reads (checked before any data is built)."""
    problem = KINDS[cfg.objective.kind].check_run(cfg)
    if problem:
        raise UserError(problem)
    tasks = KINDS[cfg.objective.kind].data_tasks
    if cfg.data.dataset is None and cfg.data.task not in tasks:
        raise UserError(f"objective {cfg.objective.kind!r} reads examples of data.task {' or '.join(tasks)}, not "
                        f"{cfg.data.task!r}; set data.task={tasks[0]}")


@dataclasses.dataclass
class _Context:
    """What the step loop works with, built once by `train`."""

    cfg: RunConfig
    data: PreparedData
    objective: Objective
    step_fn: Callable  # (state, batch, window sums) -> (state, window sums)
    eval_fn: Callable
    batches: Prefetcher  # of _Ready
    batch_sharding: Any
    ckpt: Checkpointer
    log: MetricsLog
    flops: float  # per step, for MFU
    peak: float  # FLOP/s of the hardware, for MFU
    lengths: dict[str, int]
    rows: list[int]  # this process's rows of each global batch (meshlib.process_rows)
    stop: _StopSignals
    eval_hook: Callable[[int, TrainState, dict[str, float]], dict[str, float]] | None


def _global_batch(local: dict[str, np.ndarray], sharding: Any) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def _host_reads() -> contextlib.AbstractContextManager:
    """Where the loop reads device values on the host (setup, sync points, saves): device-to-host transfers
    are allowed here whatever guard the caller set (tests run the steps under a disallowing guard)."""
    return jax.transfer_guard_device_to_host("allow")


@dataclasses.dataclass
class _Ready:
    """A batch made ahead: on the devices, the data position after it, the real tokens of the whole step."""

    batch: dict[str, jax.Array]
    position: Any
    tokens: float


def _producer(it: Any, objective: Objective, sharding: Any, global_batch: int) -> Callable[[], _Ready]:
    """Next batch of `it` for the background thread: model fields, placed on the devices, with the position a
    checkpoint taken after this batch must save (the thread reads ahead of the step)."""

    def produce() -> _Ready:
        local = next(it)
        position = copy.deepcopy(it.get_state())
        return _Ready(_global_batch(to_model_batch(local, objective), sharding), position,
                      _tokens(local, global_batch))

    return produce


def train(cfg: RunConfig, *, objective_hook: Callable[[Objective], Objective] | None = None,
          say: Callable[[str], None] | None = None, keep_state: bool = False,
          initial_params: Callable[[], Any] | None = None,
          eval_hook: Callable[[int, TrainState, dict[str, float]], dict[str, float]] | None = None,
          ) -> RunResult:
    """Run (or resume) the training job `cfg`; returns where it ended and its last metrics.

    `initial_params()` (fine-tuning) gives the weights to start from when there is no checkpoint to resume
    (instead of a random init); `eval_hook(step, state, held_out)` runs at every evaluation step, after the
    held-out loss (its metrics, empty without held-out data), and its metrics are logged with them.
    """
    d = cfg.distributed
    maybe_initialize(d.coordinator, d.num_processes, d.process_id, d.local_device_ids, d.heartbeat_timeout)
    lead = jax.process_index() == 0
    say = say or (lambda text: print(text, flush=True) if lead else None)
    from t5pegasus.training.data import loader, prepare

    check_objective(cfg.objective.kind, cfg.model_config())  # before any data is built
    _check_data_task(cfg)
    data = prepare(cfg.data, say)
    model_cfg = cfg.model_config(**_model_fields(cfg, data))
    check_labels(model_cfg, int(data.metadata.get("condition_labels", 0)))
    objective = make_objective(cfg.objective.kind, model_cfg, label_smoothing=cfg.objective.label_smoothing,
                               z_loss=cfg.objective.z_loss, packed=cfg.data.pack_rows is not None)
    if objective_hook is not None:
        objective = objective_hook(objective)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    mesh = meshlib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    rules = meshlib.rules_for(cfg.mesh.rules)
    bsh = meshlib.batch_sharding(mesh, rules)
    meshlib.check_batch_size(cfg.data.batch_size, mesh, rules)
    lengths = {k: v for k, v in (("max_source_len", cfg.data.max_source_len),
                                 ("max_target_len", cfg.data.max_target_len), ("max_len", cfg.data.max_len))}
    pack = cfg.data.pack_rows
    rows = meshlib.process_rows(bsh, cfg.data.batch_size)
    train_it = loader(data.train, cfg.data, seed=cfg.seed, shuffle=cfg.data.shuffle, max_lengths=lengths,
                      pack=pack, rows=rows)
    first = to_model_batch(next(loader(data.train, cfg.data, seed=cfg.seed, shuffle=cfg.data.shuffle,
                                       max_lengths=lengths, pack=pack, rows=rows)), objective)
    dummy = objective.dummy_batch(1, _lengths_of(first, objective))

    def init_params(key: jax.Array) -> Any:
        return objective.init(key, dummy)

    run = RunFolder(cfg.run_dir.absolute())
    run_dir = run.path
    ckpt = Checkpointer(run.checkpoints, keep=cfg.checkpoint.keep, asynchronous=cfg.checkpoint.asynchronous)
    latest = ckpt.latest_step()
    _check_resume(run, cfg, latest is not None)
    if lead:
        run.write_model_config(model_cfg)
        run.write_tokenizer_record(data.tokenizer_path, data.tokenizer_kind)
    momentum = cfg.optim.ema
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules), _host_reads():
        abstract, shardings = state_shardings(init_params, tx, momentum, mesh, rules)
        if latest is not None:
            state, data_state = ckpt.restore(latest, abstract, shardings)
            train_it.set_state(data_state)
            say(f"resuming {run_dir.name} from step {latest} ({run.checkpoints / str(latest)})")
        elif initial_params is not None:
            state = state_from_params(initial_params(), tx, momentum, cfg.seed, abstract, shardings)
        elif cfg.model.get("init"):
            raise UserError(f"model.init={cfg.model['init']} names weights to start from, but none were given "
                            f"(t5pegasus.convert.init_from.resolve_init gives them)")
        else:
            state = init_state(init_params, tx, momentum, cfg.seed, shardings)
        step = make_train_step(objective, tx, schedule, accumulate=cfg.optim.accumulate, ema_momentum=momentum)
        step_fn = jit_train_step(with_window_sums(step, cfg.train.max_bad_steps), shardings, bsh, sums=True)
        # held-out batches are not packed: the same examples are evaluated whatever data.pack says
        eval_fn = jax.jit(make_eval_step(objective.unpacked(), use_ema=cfg.eval.use_ema, ema_momentum=momentum),
                          in_shardings=(shardings, bsh))
        start = int(jax.device_get(state.step))
        flops = 3.0 * step_flops(lambda p, b: objective.loss(p, b, deterministic=True).loss, abstract.params,
                                 _global_shapes(first, cfg.data.batch_size))
        peak = platform_peak(cfg.train.dtype, cfg.log.peak_flops) * jax.process_count()
        log = MetricsLog(run_dir, total_steps=cfg.train.steps, start_step=start, jsonl=cfg.log.jsonl,
                         tensorboard=cfg.log.tensorboard, progress=cfg.log.progress)
        if start == 0:
            from t5pegasus.models import count_params

            log.message(f"{run_dir.name}: {count_params(abstract.params) / 1e6:.1f}M parameters, "
                        f"{cfg.objective.kind} objective, batch {cfg.data.batch_size}"
                        f"{' packed rows' if pack is not None else ''}, mesh "
                        f"{dict(mesh.shape)} rules {cfg.mesh.rules}, {jax.device_count()} {jax.default_backend()} "
                        f"device(s) in {jax.process_count()} process(es); MFU against a peak of "
                        f"{peak / 1e9:,.0f} GFLOP/s "
                        f"({'configured' if cfg.log.peak_flops else 'measured matmul'})")
        result = RunResult(run_dir, start, start, None, {}, None, [])
        batches = Prefetcher(_producer(train_it, objective, bsh, cfg.data.batch_size), PREFETCH)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        try:
            with _StopSignals() as stop:
                context = _Context(cfg, data, objective, step_fn, eval_fn, batches, bsh, ckpt, log, flops, peak,
                                   lengths, rows, stop, eval_hook)
                _loop(context, state, start, result, keep_state)
        finally:
            with _host_reads():
                batches.close()
                ckpt.close()
                log.close()
    result.checkpoint_steps = ckpt.all_steps()
    return result


def _lengths_of(batch: dict[str, np.ndarray], objective: Objective) -> dict[str, int]:
    return batch_lengths(batch)


def _global_shapes(batch: dict[str, np.ndarray], global_batch: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct((global_batch, *v.shape[1:]), v.dtype) for k, v in batch.items()}


@dataclasses.dataclass
class _Window:
    """Host-side account of a logging window: wall time from `start`, the steps timed (the compiling first
    step is not) with their real tokens, and the seconds the loop waited for batches."""

    start: float = 0.0
    steps: int = 0
    tokens: float = 0.0
    waited: float = 0.0

    def restart(self) -> None:
        self.start, self.steps, self.tokens, self.waited = time.perf_counter(), 0, 0.0, 0.0


def _loop(c: _Context, state: TrainState, start: int, result: RunResult, keep_state: bool) -> None:
    cfg, ckpt, log, batches = c.cfg, c.ckpt, c.log, c.batches
    every = cfg.train.log_every
    sums = window_sums()
    window = _Window()
    step = start
    last_saved = start if start else None
    position: Any = None  # the data position after the last batch a step consumed
    while step < cfg.train.steps:
        waited = batches.waited
        try:
            ready = next(batches)
        except StopIteration:
            log.message(f"the dataset ran out at step {step}")
            break
        if step == start:  # the first call compiles (lowering reads the constants the step closes over)
            with _host_reads():
                state, sums = c.step_fn(state, ready.batch, sums)
                jax.block_until_ready(sums)
            window.restart()  # time from here on
        else:
            state, sums = c.step_fn(state, ready.batch, sums)
            window.steps += 1
            window.tokens += ready.tokens
            window.waited += batches.waited - waited
        step += 1
        position = ready.position
        log_now = step % every == 0 or step == cfg.train.steps
        eval_now = bool((c.data.eval is not None or c.eval_hook) and cfg.eval.every
                        and (step % cfg.eval.every == 0 or step == cfg.train.steps))
        stopping = _agreed_stop(c, step)
        save_now = step % cfg.checkpoint.every == 0 or step == cfg.train.steps or bool(stopping)
        if not (log_now or eval_now or save_now):
            continue
        with _host_reads():  # a sync point: the only device-to-host reads of the step loop
            host = _on_host(sums)
            _check_finite(c, host, log_now)
            if log_now:
                result.last_train = _train_values(c, host, window)
                log.write(step, "train", result.last_train)
                sums = window_sums()
                window.restart()
            if eval_now:
                held_out = _evaluate(c, state) if c.data.eval else {}
                result.last_eval = {**held_out, **(c.eval_hook(step, state, held_out) if c.eval_hook else {})}
                log.write(step, "eval", result.last_eval)
            if save_now:
                ckpt.save(state, position, force=True)
                last_saved = step
        if stopping:
            result.interrupted = stopping
            result.exit_code = STOP_EXIT_CODES[cfg.train.stop_exit][stopping]
            log.message(f"{stopping}: saved a checkpoint at step {step}")
            break
    if last_saved != step and step > start:
        with _host_reads():
            _check_finite(c, _on_host(sums), False)
            ckpt.save(state, position, force=True)
    result.final_step = step
    if keep_state:
        result.state = state


def _on_host(sums: dict[str, jax.Array]) -> dict[str, Any]:
    """The device-side window sums as Python numbers (a device-to-host read: call it under `_host_reads`)."""
    return {k: v.item() for k, v in jax.device_get(sums).items()}


def _agreed_stop(c: _Context, step: int) -> str | None:
    """The stop request (a signal's name) every process acts on after `step`, or None. One process: its own
    signal, at once. Several: a signal on any of them, agreed every `distributed.stop_check_every` steps (the
    same steps on all; a one-int all-gather, a sync point), so all save the same step and stop together."""
    if jax.process_count() == 1:
        return c.stop.received
    if step % c.cfg.distributed.stop_check_every:
        return None
    with _host_reads():
        return agree_on_stop(c.stop.received)


def _check_finite(c: _Context, host: dict[str, Any], log_now: bool) -> None:
    """Log the window's non-finite steps (at a log step, or when stopping), and stop the run, saving nothing,
    once `train.max_bad_steps` of them came in a row."""
    diverged_at = int(host["diverged_at"])
    if host["nonfinite"] and (log_now or diverged_at):
        c.log.write(int(host["nonfinite_step"]), "event", {"nonfinite_loss": host["nonfinite_loss"],
                                                           "bad_in_a_row": int(host["bad_in_a_row"]),
                                                           "nonfinite_steps": int(host["nonfinite"])})
    if diverged_at:
        bad = c.cfg.train.max_bad_steps
        good = c.ckpt.latest_step()
        where = f"step {good} in {c.ckpt.directory}" if good is not None else "none was saved yet"
        raise TrainingDiverged(
            f"the loss was not finite for {bad} steps in a row (last at step {diverged_at}); stopped without "
            f"saving. The last good checkpoint is {where}; lower optim.learning_rate, enable optim.clip, "
            f"or check the data")


def _train_values(c: _Context, host: dict[str, Any], window: _Window) -> dict[str, float]:
    """A log window's train line: means over its finite steps, the last learning rate, throughput, data wait."""
    n = int(host["finite"])
    values: dict[str, float] = {k: host[k] / n for k in AVERAGED} if n else {"loss": host["last_loss"]}
    values.update(_loss_parts(c.objective, values.get("loss", 0.0), values.pop("aux_loss", None)))
    values["learning_rate"] = host["learning_rate"]
    values["skipped"] = int(host["skipped"])
    elapsed = time.perf_counter() - window.start
    if window.steps and elapsed > 0:
        values["step_time"] = elapsed / window.steps
        values["tokens_per_s"] = window.tokens / elapsed
        values["data_wait"] = window.waited / window.steps
        if c.flops and c.peak:
            values["mfu"] = c.flops / values["step_time"] / c.peak
    return values


def _tokens(local: dict[str, np.ndarray], global_batch: int) -> float:
    """Real (non-pad) tokens the whole step processed (source + target, or sequence), scaled from this
    process's share."""
    b = next(iter(local.values())).shape[0]
    if "encoder_mask" in local:
        n = float(np.sum(local["encoder_mask"]) + np.sum(local["weights"]))
    else:
        n = float(np.sum(local["weights"]))
    return n * global_batch / max(1, b)


def _evaluate(c: _Context, state: TrainState) -> dict[str, float]:
    """Held-out loss over `eval.batches` unpacked batches, summed on the devices and read once."""
    from t5pegasus.training.data import loader

    it: Iterator = loader(c.data.eval, c.cfg.data, seed=0, shuffle=False, max_lengths=c.lengths, rows=c.rows)
    objective = c.objective.unpacked()
    total = None
    for _ in range(c.cfg.eval.batches):
        try:
            local = next(it)
        except StopIteration:
            break
        sums = c.eval_fn(state, _global_batch(to_model_batch(local, objective), c.batch_sharding))
        total = sums if total is None else jax.tree.map(lambda a, b: a + b, total, sums)
    if total is None:
        return {"loss": 0.0, "accuracy": 0.0, "tokens": 0.0}
    total = jax.device_get(total)
    w = max(float(total.weight), 1.0)
    return {"loss": float(total.loss) / w, "accuracy": float(total.correct) / w, "tokens": float(total.weight),
            **_loss_parts(objective, float(total.loss) / w, float(total.aux) / w)}


def _loss_parts(objective: Objective, loss: float, aux: float | None) -> dict[str, float]:
    """The named parts of a loss whose objective has two (SimBERT: seq2seq and similarity); else nothing."""
    names = objective.loss_parts
    if names is None or aux is None:
        return {}
    return {names[0]: loss - aux, names[1]: aux}
