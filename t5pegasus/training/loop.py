"""The training loop: data -> sharded state -> jitted steps, with checkpoints, metrics, evaluation, resume.

`train(cfg)` is a function of (config, data, seed): rerunning it after an interruption resumes from the
latest checkpoint (state, RNG and every process's data position) and follows the same trajectory.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import yaml

from t5pegasus.errors import UserError
from t5pegasus.fileio import write_text
from t5pegasus.training import mesh as meshlib
from t5pegasus.training.checkpoint import Checkpointer
from t5pegasus.training.distributed import maybe_initialize
from t5pegasus.training.metrics import MetricsLog, platform_peak, step_flops
from t5pegasus.training.objectives import Objective, batch_lengths, make_objective, to_model_batch
from t5pegasus.training.optim import make_optimizer
from t5pegasus.training.runconfig import RunConfig, resume_mismatches
from t5pegasus.training.state import TrainState, init_state, state_from_params, state_shardings
from t5pegasus.training.step import jit_train_step, make_eval_step, make_train_step


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


def _model_fields(cfg: RunConfig, data: Any) -> dict[str, Any]:
    """Vocab size (rounded up to a multiple of 128, so any tensor split divides it) and special ids."""
    from t5pegasus import config as configs

    family = cfg.model.get("family", "t5")
    cls = {"t5": configs.T5Config, "bert": getattr(configs, "BertConfig", None),
           "gpt": getattr(configs, "GPTConfig", None)}.get(family)
    ids = data.special_ids
    wanted = {"vocab_size": int(math.ceil(data.vocab_size / 128) * 128), "pad_token_id": ids.get("pad"),
              "eos_token_id": ids.get("eos"), "unk_token_id": ids.get("unk"),
              "decoder_start_token_id": ids.get("decoder_start"), "bos_token_id": ids.get("bos")}
    names = cls.field_names() if cls is not None else []
    return {k: v for k, v in wanted.items() if k in names and v is not None and k not in cfg.model}


def _check_resume(run_dir: Path, cfg: RunConfig, has_checkpoint: bool) -> None:
    saved_path = run_dir / "config.yaml"
    if has_checkpoint and saved_path.is_file():
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8"))
        diffs = resume_mismatches(saved, cfg.to_dict())
        if diffs:
            raise UserError(f"run {run_dir} has checkpoints from a different config ({'; '.join(diffs)}); "
                            f"resume with the same settings, or start a new run with name=NEW_NAME")
    if jax.process_index() == 0:
        write_text(saved_path, cfg.to_yaml())


def _global_batch(local: dict[str, np.ndarray], sharding: Any) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def train(cfg: RunConfig, *, objective_hook: Callable[[Objective], Objective] | None = None,
          say: Callable[[str], None] | None = None, keep_state: bool = False,
          initial_params: Callable[[], Any] | None = None,
          eval_hook: Callable[[int, TrainState], dict[str, float]] | None = None) -> RunResult:
    """Run (or resume) the training job `cfg`; returns where it ended and its last metrics.

    `initial_params()` (fine-tuning) gives the weights to start from when there is no checkpoint to resume
    (instead of a random init); `eval_hook(step, state)` runs at every evaluation step, after the held-out
    loss, and its metrics are logged with it.
    """
    d = cfg.distributed
    maybe_initialize(d.coordinator, d.num_processes, d.process_id, d.local_device_ids)
    lead = jax.process_index() == 0
    say = say or (lambda text: print(text, flush=True) if lead else None)
    from t5pegasus.training.data import loader, prepare

    data = prepare(cfg.data, say)
    model_cfg = cfg.model_config(**_model_fields(cfg, data))
    objective = make_objective(cfg.objective.kind, model_cfg, label_smoothing=cfg.objective.label_smoothing,
                               z_loss=cfg.objective.z_loss)
    if objective_hook is not None:
        objective = objective_hook(objective)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.steps)
    mesh = meshlib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    rules = meshlib.rules_for(cfg.mesh.rules)
    bsh = meshlib.batch_sharding(mesh, rules)
    lengths = {k: v for k, v in (("max_source_len", cfg.data.max_source_len),
                                 ("max_target_len", cfg.data.max_target_len), ("max_len", cfg.data.max_len))}
    train_it = loader(data.train, cfg.data, seed=cfg.seed, shuffle=cfg.data.shuffle, max_lengths=lengths)
    first = to_model_batch(next(loader(data.train, cfg.data, seed=cfg.seed, shuffle=cfg.data.shuffle,
                                       max_lengths=lengths)), objective)
    dummy = objective.dummy_batch(1, _lengths_of(first, objective))

    def init_params(key: jax.Array) -> Any:
        return objective.init(key, dummy)

    run_dir = cfg.run_dir.absolute()
    ckpt = Checkpointer(run_dir / "checkpoints", keep=cfg.checkpoint.keep, asynchronous=cfg.checkpoint.asynchronous)
    latest = ckpt.latest_step()
    _check_resume(run_dir, cfg, latest is not None)
    if lead:
        model_cfg.save(run_dir / "model_config.json")
        write_text(run_dir / "tokenizer.txt", data.tokenizer_path + "\n")
    momentum = cfg.optim.ema
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract, shardings = state_shardings(init_params, tx, momentum, mesh, rules)
        if latest is not None:
            state, data_state = ckpt.restore(latest, abstract, shardings)
            train_it.set_state(data_state)
            say(f"resuming {run_dir.name} from step {latest} ({run_dir / 'checkpoints' / str(latest)})")
        elif initial_params is not None:
            state = state_from_params(initial_params(), tx, momentum, cfg.seed, abstract, shardings)
        else:
            state = init_state(init_params, tx, momentum, cfg.seed, shardings)
        step_fn = jit_train_step(make_train_step(objective, tx, schedule, accumulate=cfg.optim.accumulate,
                                                 ema_momentum=momentum), shardings, bsh)
        eval_fn = jax.jit(make_eval_step(objective, use_ema=cfg.eval.use_ema, ema_momentum=momentum),
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
                        f"{cfg.objective.kind} objective, batch {cfg.data.batch_size}, mesh "
                        f"{dict(mesh.shape)} rules {cfg.mesh.rules}, {jax.device_count()} {jax.default_backend()} "
                        f"device(s) in {jax.process_count()} process(es); MFU against a peak of "
                        f"{peak / 1e9:,.0f} GFLOP/s "
                        f"({'configured' if cfg.log.peak_flops else 'measured matmul'})")
        result = RunResult(run_dir, start, start, None, {}, None, [])
        try:
            with _StopSignals() as stop:
                _loop(cfg, state, start, step_fn, eval_fn, train_it, data, objective, bsh, ckpt, log, flops, peak,
                      result, stop, lengths, keep_state, eval_hook)
        finally:
            ckpt.close()
            log.close()
    result.checkpoint_steps = ckpt.all_steps()
    return result


def _lengths_of(batch: dict[str, np.ndarray], objective: Objective) -> dict[str, int]:
    return batch_lengths(batch)


def _global_shapes(batch: dict[str, np.ndarray], global_batch: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct((global_batch, *v.shape[1:]), v.dtype) for k, v in batch.items()}


def _loop(cfg: RunConfig, state: TrainState, start: int, step_fn: Callable, eval_fn: Callable, train_it: Any,
          data: Any, objective: Objective, bsh: Any, ckpt: Checkpointer, log: MetricsLog, flops: float,
          peak: float, result: RunResult, stop: _StopSignals, lengths: dict[str, int], keep_state: bool,
          eval_hook: Callable[[int, TrainState], dict[str, float]] | None = None) -> None:
    from t5pegasus.training.data import loader

    every = cfg.train.log_every
    window_start, window_steps, window_tokens = None, 0, 0.0
    acc: dict[str, float] = {}
    step = start
    last_saved = start if start else None
    while step < cfg.train.steps:
        try:
            local = next(train_it)
        except StopIteration:
            log.message(f"the dataset ran out at step {step}")
            break
        state, metrics = step_fn(state, _global_batch(to_model_batch(local, objective), bsh))
        step += 1
        m = jax.device_get(metrics)
        if not bool(m["finite"]):
            bad = int(jax.device_get(state.bad_in_a_row))
            log.write(step, "event", {"nonfinite_loss": float(m["loss"]), "bad_in_a_row": bad})
            if bad >= cfg.train.max_bad_steps:
                good = ckpt.latest_step()
                where = f"step {good} in {ckpt.directory}" if good is not None else "none was saved yet"
                raise TrainingDiverged(
                    f"the loss was not finite for {bad} steps in a row (last at step {step}); stopped without "
                    f"saving. The last good checkpoint is {where}; lower optim.learning_rate, enable optim.clip, "
                    f"or check the data")
        for k in ("loss", "accuracy", "grad_norm", "z_loss"):
            if bool(m["finite"]):
                acc[k] = acc.get(k, 0.0) + float(m[k])
        acc["n_finite"] = acc.get("n_finite", 0) + int(bool(m["finite"]))
        if window_start is None:  # the first step compiled: time from here on
            window_start, window_steps, window_tokens, acc = time.perf_counter(), 0, 0.0, {}
        else:
            window_steps += 1
            window_tokens += _tokens(local, cfg.data.batch_size)
        if step % every == 0 or step == cfg.train.steps:
            n = max(1, acc.get("n_finite", 0))
            elapsed = time.perf_counter() - window_start if window_start else 0.0
            values = {k: acc[k] / n for k in ("loss", "accuracy", "grad_norm", "z_loss") if k in acc}
            values["learning_rate"] = float(m["learning_rate"])
            values["skipped"] = int(jax.device_get(state.skipped))
            if window_steps and elapsed > 0:
                values["step_time"] = elapsed / window_steps
                values["tokens_per_s"] = window_tokens / elapsed
                if flops and peak:
                    values["mfu"] = flops / values["step_time"] / peak
            if not values.get("loss") and not acc.get("n_finite"):
                values["loss"] = float(m["loss"])
            log.write(step, "train", values)
            result.last_train = values
            window_start, window_steps, window_tokens, acc = time.perf_counter(), 0, 0.0, {}
        if (data.eval is not None or eval_hook) and cfg.eval.every and (step % cfg.eval.every == 0
                                                                         or step == cfg.train.steps):
            held_out = _evaluate(cfg, state, eval_fn, data, objective, bsh, lengths, loader) if data.eval else {}
            result.last_eval = {**held_out, **(eval_hook(step, state) if eval_hook else {})}
            log.write(step, "eval", result.last_eval)
        if step % cfg.checkpoint.every == 0 or step == cfg.train.steps or stop.received:
            ckpt.save(state, train_it.get_state(), force=True)
            last_saved = step
        if stop.received:
            result.interrupted = stop.received
            log.message(f"{stop.received}: saved a checkpoint at step {step}")
            break
    if last_saved != step and step > start:
        ckpt.save(state, train_it.get_state(), force=True)
    result.final_step = step
    if keep_state:
        result.state = state


def _tokens(local: dict[str, np.ndarray], global_batch: int) -> float:
    """Tokens the whole step processed (source + target, or sequence), scaled from this process's share."""
    b = next(iter(local.values())).shape[0]
    if "encoder_mask" in local:
        n = float(np.sum(local["encoder_mask"]) + np.sum(local["weights"]))
    else:
        n = float(np.sum(local["weights"]))
    return n * global_batch / max(1, b)


def _evaluate(cfg: RunConfig, state: TrainState, eval_fn: Callable, data: Any, objective: Objective, bsh: Any,
              lengths: dict[str, int], loader: Callable) -> dict[str, float]:
    it = loader(data.eval, cfg.data, seed=0, shuffle=False, max_lengths=lengths)
    total = np.zeros(4)
    for _ in range(cfg.eval.batches):
        try:
            local = next(it)
        except StopIteration:
            break
        sums = jax.device_get(eval_fn(state, _global_batch(to_model_batch(local, objective), bsh)))
        total += np.asarray([sums.loss, sums.z_loss, sums.correct, sums.weight], np.float64)
    w = max(total[3], 1.0)
    return {"loss": total[0] / w, "accuracy": total[2] / w, "tokens": total[3]}
