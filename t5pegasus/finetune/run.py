"""Fine-tuning through the training loop: init weights from a model folder, pair files as prepared datasets,
generation on the dev set at every evaluation (ROUGE / BLEU), and the best model kept in `<out>/best/`.

Everything the loop gives carries over: sharding rules, checkpoints, resume by rerunning the same command
(the datasets, config and best-so-far are found again in the output folder), EMA, metrics.jsonl / TensorBoard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from t5pegasus import families
from t5pegasus.convert.model_folder import LoadedModel, align_special_ids, load_model, model_section, open_tokenizer
from t5pegasus.decoding import Settings
from t5pegasus.errors import UserError
from t5pegasus.finetune.data import (
    LAYOUT,
    Pair,
    check_labelled,
    group_pairs,
    label_vocabulary,
    prepare_pairs,
    read_training_file,
)
from t5pegasus.finetune.metrics import SELECTION, better
from t5pegasus.training.run_folder import RunFolder


@dataclasses.dataclass(frozen=True)
class FinetuneSpec:
    """What `t5pegasus finetune` was asked to do (its command-line options)."""

    init: str
    train: str
    dev: str
    output: str
    objective: str | None = None  # default: the model family's own (seq2seq for T5, lm for GPT, unilm for BERT)
    model_kind: str | None = None  # what the init model is where its folder does not say (BERT: simbert, ...)
    ema: bool = False  # start from the init run's EMA weights
    tokenizer: str | None = None
    tokenizer_kind: str | None = None  # default: what the init folder records (t5pegasus.text.load.KINDS)
    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 2e-4
    warmup_steps: int = 0
    max_source_len: int | None = None
    max_target_len: int | None = None
    eval_every: int = 200
    eval_limit: int = 0  # generate on the first N dev pairs (0 = all)
    eval_batch_size: int | None = None
    metric: str = "rouge-l"
    settings: Settings | None = None  # decoding at evaluation (default greedy) ...
    max_new_tokens: int | None = None  # ... with at most this many new tokens (default: the max target length)
    seed: int = 0
    overrides: tuple[str, ...] = ()


@dataclasses.dataclass
class FinetuneResult:
    run_dir: Path
    best_dir: Path | None
    best: dict[str, Any] | None  # the best model's metrics.json
    run: Any  # t5pegasus.training.loop.RunResult


def _lengths(spec: FinetuneSpec, cfg: Any) -> tuple[int, int]:
    """(max source, max target) tokens: given, or 512/128 for T5; GPT/BERT default to their trained position
    table and may be given up to its hierarchical extension (`position_limit`)."""
    positions, trained = cfg.position_limit, cfg.trained_positions
    if trained is None:
        return spec.max_source_len or 512, spec.max_target_len or 128
    target = spec.max_target_len or min(128, trained // 4)
    source = spec.max_source_len or max(1, trained - target)
    if positions is not None and source + target > positions:
        longer = ("" if positions > trained else
                  f"; attention.position=hierarchical would extend its {trained} to {trained * trained}")
        raise UserError(f"--max-source-len {source} + --max-target-len {target} exceed the model's {positions} "
                        f"positions{longer}")
    return source, target


def _as_overridden(cfg: Any, overrides: tuple[str, ...]) -> Any:
    """`cfg` with the `model.*` overrides that are its fields (`model.attention.position=hierarchical` turns a
    learned table into its n * n extension: the lengths are sized for the model that will train)."""
    import dataclasses

    from t5pegasus.training.runconfig import parse_overrides

    fields = {f.name for f in dataclasses.fields(cfg)}
    changes = {k: v for k, v in (parse_overrides(list(overrides)).get("model") or {}).items() if k in fields}
    return cfg.replace(**changes) if changes else cfg


def _model_dict(cfg: Any, objective: str) -> dict[str, Any]:
    """The run config's model section: the init model, made the model kind of the objective's name where the
    family has one (UniLM fine-tuning of a plain BERT: same weights, seq2seq mask; SimBERT: also the linear
    pooler)."""
    return {**model_section(cfg), **families.of(cfg).model_kinds.get(objective, {})}


DEFAULT_CONDITION_SIZE = 128  # bert4keras' conditional LM example: Embedding(num_labels, 128)


def _label_fields(cfg: Any, objective: str, pairs: list[Any], say: Callable[[str], None]) -> dict[str, Any]:
    """The model fields a labelled training file needs: none when it has no labels or the model already has a
    label embedding holding them (each label is checked against it); else a new embedding with a row per label
    (conditional LayerNorm turned on with `condition_size` 128 unless it is on or `model.condition_size` says)."""
    rows, names = label_vocabulary(pairs) if LAYOUT[objective] != "simbert" else (0, ())
    if not rows:
        return {}
    check_labelled(cfg, objective)
    if cfg.num_conditions:
        for label in {p.label for p in pairs}:
            cfg.condition_index(label)
        return {}
    fields: dict[str, Any] = {"num_conditions": rows, "condition_labels": list(names)}
    if not cfg.conditional_layer_norm:
        fields.update(conditional_layer_norm=True, condition_size=DEFAULT_CONDITION_SIZE)
    say(f"the training pairs have {rows} condition labels{' (' + ', '.join(names) + ')' if names else ''}: "
        "adding a label embedding and conditional LayerNorm (zero-initialised: the model starts as it was)")
    return fields


def _with_new_params(model_cfg: Any, params: Any, seed: int) -> Any:
    """`params` plus freshly initialised leaves for the parameters `model_cfg` has and they lack: only the
    label embedding and conditional LayerNorm projections may be new (the projections start at zero)."""
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from t5pegasus.models import unbox

    model = families.of(model_cfg).model.load()(model_cfg)
    ids = jnp.ones((1, 8), jnp.int32)
    fresh = jax.jit(lambda key: unbox(model.init(key, ids, labels=jnp.zeros((1,), jnp.int32))["params"]))(
        jax.random.key(seed))
    given = traverse_util.flatten_dict(unbox(params))
    merged = traverse_util.flatten_dict(fresh)
    new = [k for k in merged if k not in given]
    odd = [k for k in new if not k[-1].startswith("condition_")]
    if odd:
        raise UserError(f"the initial weights lack {', '.join('/'.join(k) for k in odd[:5])}")
    merged.update({k: v for k, v in given.items() if k in merged})
    return traverse_util.unflatten_dict(merged)


def _run_config(spec: FinetuneSpec, out: Path, model: dict[str, Any], objective: str, datasets: tuple[Path, Path],
                lengths: tuple[int, int], dev_size: int) -> Any:
    from t5pegasus.training import runconfig

    source, target = lengths
    base = {
        "name": out.name, "output_dir": str(out.parent), "seed": spec.seed, "model": model,
        "data": {"dataset": str(datasets[0]), "eval_dataset": str(datasets[1]), "task": LAYOUT[objective],
                 "max_source_len": source, "max_target_len": target, "max_len": source + target,
                 "batch_size": spec.batch_size},
        "objective": {"kind": objective},
        "optim": {"name": "adamw", "learning_rate": spec.learning_rate, "schedule": "piecewise",
                  "warmup_steps": spec.warmup_steps, "weight_decay": 0.01, "clip": 1.0},
        "train": {"steps": spec.steps, "log_every": max(1, min(10, spec.eval_every))},
        "checkpoint": {"every": spec.eval_every, "keep": 2},
        # the dev loss over 4 batches, or over the whole dev file when it picks the best model
        "eval": {"every": spec.eval_every,
                 "batches": -(-dev_size // spec.batch_size) if spec.metric == "loss" else 4},
    }  # fmt: skip
    return runconfig.from_dict(runconfig.merge(base, runconfig.parse_overrides(list(spec.overrides))))


class BestKeeper:
    """Saves `<out>/best/` when the chosen metric beats the best so far (read back from its metrics.json,
    so a resumed run keeps comparing against what is on disk)."""

    def __init__(self, out: Path, metric: str, *, resuming: bool = True) -> None:
        self.best = RunFolder(out).best
        self.folder = self.best.path
        self.metric = metric
        saved = self.best.metrics() if resuming else None  # a fresh start outdoes any leftover best model
        self.value = None if saved is None else saved.get("metrics", {}).get(metric)
        self.step = None if saved is None else saved.get("step")

    def better(self, metrics: dict[str, float]) -> bool:
        return better(self.metric, metrics[self.metric], self.value)

    def save(self, step: int, params: Any, cfg: Any, tokenizer_path: Path, info: dict[str, Any],
             metrics: dict[str, float]) -> None:
        record = {"step": step, "metric": self.metric, "value": metrics[self.metric], "metrics": metrics}
        self.best.save_model(step, params, cfg, tokenizer_path, info, record)
        self.value, self.step = metrics[self.metric], step


def _start(spec: FinetuneSpec, out: Path, say: Callable[[str], None]) -> tuple[LoadedModel, bool]:
    """The model to fine-tune: on a resume, the run's own config and tokenizer (no weights needed);
    otherwise the init folder's config, weights and tokenizer."""
    run = RunFolder(out)
    if run.holds_run(out) and run.latest_step() is not None:
        info = run.info()
        tok, tok_path, kind = open_tokenizer(run, "run", spec.tokenizer, spec.tokenizer_kind)
        cfg = align_special_ids(run.model_config(), tok)
        return LoadedModel(cfg, None, tok, tok_path.resolve(), kind, "run", info), True
    say(f"loading {spec.init}{' (EMA weights)' if spec.ema else ''}…")
    return load_model(spec.init, ema=spec.ema, tokenizer=spec.tokenizer, model_kind=spec.model_kind,
                      tokenizer_kind=spec.tokenizer_kind), False


def finetune(spec: FinetuneSpec, say: Callable[[str], None] | None = None) -> FinetuneResult:
    """Run (or resume) a fine-tuning job; returns the run folder, the best model folder and its metrics."""
    import jax

    from t5pegasus.finetune.predict import Predictor
    from t5pegasus.text.load import tokenizer_spec
    from t5pegasus.training.loop import train
    from t5pegasus.training.state import ema_params

    lead = jax.process_index() == 0
    say = say or (lambda text: print(text, flush=True) if lead else None)
    if spec.metric not in SELECTION:
        raise UserError(f"unknown metric {spec.metric!r}; choose one of: {', '.join(SELECTION)}")
    out = Path(spec.output).absolute()
    if spec.objective is not None and spec.objective not in LAYOUT:
        raise UserError(f"unknown objective {spec.objective!r}; choose one of: {', '.join(LAYOUT)}")
    # read both files first: a bad file stops before any heavy work (the objective decides their format; a
    # family default is pairs)
    train_pairs = read_training_file(spec.train, spec.objective or "seq2seq")
    dev_read = read_training_file(spec.dev, spec.objective or "seq2seq")
    loaded, resuming = _start(spec, out, say)
    cfg, tok = loaded.cfg, loaded.tokenizer
    family = families.of(cfg)
    objective = spec.objective or family.default_objective
    if objective not in family.objectives:
        trains = " or ".join(f.name for f in families.for_objective(objective))
        raise UserError(f"objective {objective} trains a {trains} model; {spec.init} holds a {family.name} model "
                        f"(use --objective {family.default_objective})")
    dev_pairs = group_pairs(dev_read) if LAYOUT[objective] == "simbert" else dev_read
    labels = _label_fields(cfg, objective, train_pairs, say)
    if LAYOUT[objective] != "simbert" and (label_vocabulary(train_pairs)[0] > 0) != (label_vocabulary(dev_read)[0] > 0):
        raise UserError(f"{spec.train if train_pairs[0].label is None else spec.dev} has no condition labels but "
                        f"{spec.dev if train_pairs[0].label is None else spec.train} has: give both a \"label\" per "
                        "line, or neither")
    model = {**_model_dict(cfg, objective), **labels}
    labelled_cfg = _as_overridden(cfg.replace(**model) if labels else cfg, spec.overrides)
    lengths = _lengths(spec, labelled_cfg)
    tok_spec = tokenizer_spec(loaded.tokenizer_path, tok, loaded.tokenizer_kind)
    data_dir = out / "data"
    datasets = tuple(prepare_pairs(f, data_dir, tok, tok_spec, objective, *lengths, pairs=p, cfg=labelled_cfg)
                     for f, p in ((spec.train, train_pairs), (spec.dev, dev_read)))
    run_cfg = _run_config(spec, out, model, objective, datasets, lengths, len(dev_read))
    model_cfg = run_cfg.model_config()
    settings = (spec.settings or Settings()).replace(max_new_tokens=spec.max_new_tokens or lengths[1])
    info = {"init": str(spec.init), "train": str(Path(spec.train).absolute()), "dev": str(Path(spec.dev).absolute()),
            "objective": objective, "model_kind": spec.model_kind,
            "max_source_len": lengths[0], "max_target_len": lengths[1],
            "tokenizer_kind": loaded.tokenizer_kind, "metric": spec.metric,
            "decoding": dataclasses.asdict(settings)}
    if lead:
        RunFolder(out).write_info(info)
    keeper = BestKeeper(out, spec.metric, resuming=resuming)
    dev_eval: list[Pair] = dev_pairs[: spec.eval_limit] if spec.eval_limit else dev_pairs
    momentum = run_cfg.optim.ema
    model_cfg_labels = bool(getattr(model_cfg, "num_conditions", 0))

    def evaluate(step: int, state: Any, held_out: dict[str, float]) -> dict[str, float]:
        from t5pegasus.finetune.metrics import score

        params = ema_params(state, momentum) if run_cfg.eval.use_ema and momentum else state.params
        predictor = Predictor(model_cfg, params, tok, max_source_len=lengths[0],
                              batch_size=spec.eval_batch_size or spec.batch_size, row_multiple=jax.device_count())
        conditions = [p.label for p in dev_eval] if model_cfg_labels else None
        predictions = [texts[0] for texts in predictor([p.src for p in dev_eval], settings, seed=spec.seed,
                                                       labels=conditions)]
        metrics = {**score(predictions, [p.tgt for p in dev_eval]),
                   **({"loss": held_out["loss"]} if spec.metric == "loss" else {})}
        improved = keeper.better(metrics)
        if improved:
            keeper.save(step, params, model_cfg, loaded.tokenizer_path, info, metrics)
        say(f"step {step} dev ({len(dev_eval)} pairs): " + " ".join(f"{k}={v:.2f}" for k, v in metrics.items())
            + (f"; new best {spec.metric}, saved {keeper.folder}" if improved
               else f"; best {spec.metric} {keeper.value:.2f} at step {keeper.step}"))
        return {**metrics, f"best_{spec.metric}": float(keeper.value)}

    def initial_params() -> Any:  # handed over once, so the loaded copy is freed when the state holds it
        params, loaded.params = loaded.params, None
        return _with_new_params(model_cfg, params, spec.seed) if labels else params

    if resuming:
        say(f"resuming the fine-tuning run in {out}")
    run = train(run_cfg, say=say, initial_params=None if resuming else initial_params, eval_hook=evaluate)
    best = keeper.best.metrics()
    return FinetuneResult(out, keeper.folder if best else None, best, run)
