"""Run configs: YAML presets plus `key=value` overrides (dotted keys), validated section by section.

Sections: model (a model preset plus field overrides), data, objective, optim, train, mesh, checkpoint,
eval, log, distributed. An unknown key is a UserError naming the keys that exist.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.resources
import typing
from pathlib import Path
from typing import Any

import yaml

from t5pegasus.errors import UserError

OPTIMIZERS = ("adamw", "adafactor")
CLIPS = ("global", "soft", "none")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule settings (the `optim` section of a run config)."""

    name: str = "adamw"
    learning_rate: float = 1e-3
    schedule: str = "piecewise"
    points: dict[int, float] | None = None  # piecewise: {step: multiplier}; default {warmup_steps: 1}
    warmup_steps: int = 0
    total_steps: int = 0  # cosine: the step the decay ends (default: the run's steps)
    final_fraction: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    weight_decay: float = 0.01
    clip: float = 1.0  # 0 = no clipping
    clip_kind: str = "global"
    accumulate: int = 1  # micro-batches per update (same update as one batch `accumulate` times larger)
    ema: float = 0.0  # EMA momentum of the weights (e.g. 0.999); 0 = off

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise UserError(f"optim.name {self.name!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.clip_kind not in CLIPS:
            raise UserError(f"optim.clip_kind {self.clip_kind!r} is not one of {', '.join(CLIPS)}")
        if self.accumulate < 1:
            raise UserError("optim.accumulate must be at least 1")
        if not 0.0 <= self.ema < 1.0:
            raise UserError("optim.ema must be in [0, 1)")
        if self.learning_rate <= 0:
            raise UserError("optim.learning_rate must be positive")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str | None = None  # a prepared dataset dir (`t5pegasus prepare`); None = build from `corpus`
    eval_dataset: str | None = None  # held-out prepared dataset (with `dataset`)
    corpus: str | list[str] = "peoples-daily"  # 'peoples-daily' or text files / dirs (blank-line documents)
    vocab: str | None = None  # vocab.txt / sentencepiece .model; None = build a WordPiece vocab from the corpus
    tokenizer_kind: str | None = None  # wordpiece / sentencepiece / cpm (CPM-LM's .model); None = by suffix
    vocab_size: int = 8000
    task: str = "seq2seq"  # prepare --task: seq2seq (T5 PEGASUS), pegasus, lm, unilm, simbert
    max_source_len: int = 256
    max_target_len: int = 64
    max_len: int = 256
    eval_every_nth: int = 50  # every n-th document is held out for evaluation (corpus builds)
    batch_size: int = 16  # global, over all processes (rows, when packed)
    shuffle: bool = True
    # several examples per row, attention kept within each: true (rows as long as the examples) or the row
    # lengths, {source: N, target: M} (seq2seq) / {length: N} (lm)
    pack: bool | dict[str, int] = False

    @property
    def pack_rows(self) -> dict[str, int] | None:
        """None when not packing; else the packed row lengths by name ({}: the example lengths)."""
        if self.pack is False:
            return None
        return dict(self.pack) if isinstance(self.pack, dict) else {}
    cache_dir: str = "runs/cache"


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    kind: str = "seq2seq"  # seq2seq | lm | unilm | simbert
    label_smoothing: float = 0.0
    z_loss: float = 0.0


# train.stop_exit: the exit code of a run stopped by each signal once it saved its checkpoint
STOP_EXIT_CODES: dict[str, dict[str, int]] = {"zero": {"SIGTERM": 0, "SIGINT": 0},
                                              "signal": {"SIGTERM": 143, "SIGINT": 130}}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    dtype: str = "float32"  # compute dtype; parameters stay float32
    log_every: int = 10
    max_bad_steps: int = 5  # consecutive non-finite losses that stop the run
    # The exit code once a SIGTERM/SIGINT stop has saved its checkpoint: zero (a clean, resumable stop), or
    # signal (143 / 130, for an orchestrator that must read a stopped run as not finished)
    stop_exit: str = "zero"


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: str = "data"  # data | fsdp | fsdp_tensor


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100
    keep: int = 3
    asynchronous: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every: int = 100  # 0 = never
    batches: int = 4
    use_ema: bool = False


@dataclasses.dataclass(frozen=True)
class LogConfig:
    tensorboard: bool = True
    jsonl: bool = True
    progress: str = "auto"  # auto (a terminal and not CI) | on | off
    peak_flops: float = 0.0  # per process on CPU, per device elsewhere; 0 = measure with a matmul


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    coordinator: str | None = None  # host:port of process 0; None = auto-detect (TPU pod / SLURM) or single
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: list[int] | None = None
    heartbeat_timeout: int = 100  # seconds a silent process counts as alive; then the others stop
    stop_check_every: int = 10  # steps between the processes' agreement on a stop request (SIGTERM/SIGINT)


SECTIONS: dict[str, type] = {
    "data": DataConfig, "objective": ObjectiveConfig, "optim": OptimConfig, "train": TrainConfig,
    "mesh": MeshConfig, "checkpoint": CheckpointConfig, "eval": EvalConfig, "log": LogConfig,
    "distributed": DistributedConfig,
}  # fmt: skip
TOP_LEVEL = {"name": "t5-pegasus-demo", "output_dir": "runs", "seed": 0}
# Keys a resumed run may change (everything else must equal the checkpointed run's config).
RESUMABLE = ("name", "output_dir", "train.steps", "train.log_every", "train.stop_exit", "mesh.", "checkpoint.",
             "eval.", "log.", "distributed.", "data.cache_dir")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    name: str
    output_dir: str
    seed: int
    model: dict[str, Any]  # {family: t5, preset: NAME, <field>: value, ...}; or {init: DIR, family, <every field>}
    data: DataConfig
    objective: ObjectiveConfig
    optim: OptimConfig
    train: TrainConfig
    mesh: MeshConfig
    checkpoint: CheckpointConfig
    eval: EvalConfig
    log: LogConfig
    distributed: DistributedConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in TOP_LEVEL}
        out["model"] = dict(self.model)
        for name in SECTIONS:
            out[name] = dataclasses.asdict(getattr(self, name))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @property
    def family(self) -> Any:
        """The model family record (`t5pegasus.families.Family`) of the `model` section."""
        from t5pegasus import families

        return families.get(self.model.get("family", "t5"))

    def model_config(self, **fixed: Any) -> Any:
        """The model config: family preset + overrides + `fixed` (vocab size and special ids from the data)."""
        values = dict(self.model)
        if "init" in values and "family" not in values:
            raise UserError(f"model.init={values['init']}: the model section comes from that folder; resolve it "
                            f"first (t5pegasus.convert.init_from.resolve_init, as `t5pegasus pretrain` does)")
        values.pop("init", None)  # the folder the weights came from (recorded; the fields beside it are the config)
        values.pop("family", None)
        preset = values.pop("preset", None)
        cls = self.family.config
        values.update(fixed)
        values.setdefault("dtype", self.train.dtype)
        return cls.preset(preset, **values) if preset else cls.from_dict(values)


def _near(key: str, choices: list[str]) -> str:
    near = difflib.get_close_matches(key, choices, n=2)
    return f" (did you mean {' or '.join(near)}?)" if near else ""


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Make `value` fit a field's type (YAML reads `2e-4` as a string, `1` where a float is meant)."""
    if value is None:
        return value
    args = typing.get_args(hint) or (hint,)
    if isinstance(value, bool) or type(value) in args:
        if bool in args or not isinstance(value, bool):
            return value
    for t in (int, float):
        if t in args and isinstance(value, int | float | str) and not isinstance(value, bool):
            try:
                as_t = t(value)
            except ValueError:
                continue
            if t is float or float(as_t) == float(value):
                return as_t
    if bool in args and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return value.lower() in ("true", "yes", "on")
    if str in args and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if str in args and bool not in args and isinstance(value, bool):  # YAML reads `off` / `on` as booleans
        return "on" if value else "off"
    if any(typing.get_origin(a) in (list, dict) for a in args) and isinstance(value, list | dict):
        return value
    names = " or ".join(getattr(a, "__name__", str(a)) for a in args)
    raise UserError(f"config key {key} = {value!r} is not a {names}")


def _build(cls: type, values: dict[str, Any], section: str) -> Any:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in names]
    if unknown:
        raise UserError("unknown config key(s): " + ", ".join(f"{section}.{k}{_near(k, names)}" for k in unknown)
                        + f"; {section} has: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    try:
        return cls(**values)
    except TypeError as e:
        raise UserError(f"bad value in config section {section}: {e}") from None


def from_dict(values: dict[str, Any]) -> RunConfig:
    """Validate a nested dict into a RunConfig."""
    values = copy.deepcopy(values)
    known = list(TOP_LEVEL) + ["model"] + list(SECTIONS)
    unknown = [k for k in values if k not in known]
    if unknown:
        raise UserError("unknown config key(s): " + ", ".join(f"{k}{_near(k, known)}" for k in unknown)
                        + f"; the sections are: {', '.join(known)}")
    top = {k: values.get(k, v) for k, v in TOP_LEVEL.items()}
    model = values.get("model") or {"family": "t5", "preset": "tiny"}
    if not isinstance(model, dict):
        raise UserError("config section model must be a mapping (family, preset, field overrides)")
    sections = {}
    for name, cls in SECTIONS.items():
        section = values.get(name) or {}
        if not isinstance(section, dict):
            raise UserError(f"config section {name} must be a mapping of keys to values")
        if name == "optim" and section.get("points") is not None:
            section["points"] = {int(k): float(v) for k, v in section["points"].items()}
        sections[name] = _build(cls, section, name)
    cfg = RunConfig(model=model, **top, **sections)
    _check(cfg)
    return cfg


def _check(cfg: RunConfig) -> None:
    if not str(cfg.name) or "/" in str(cfg.name):
        raise UserError(f"run name {cfg.name!r} must be a non-empty name without '/'")
    if cfg.train.steps < 1 or cfg.data.batch_size < 1:
        raise UserError("train.steps and data.batch_size must be at least 1")
    if cfg.data.batch_size % cfg.optim.accumulate:
        raise UserError(f"data.batch_size {cfg.data.batch_size} is not divisible by optim.accumulate "
                        f"{cfg.optim.accumulate}")
    if cfg.train.dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"train.dtype {cfg.train.dtype!r} must be float32, bfloat16 or float16")
    if cfg.train.stop_exit not in STOP_EXIT_CODES:
        raise UserError(f"train.stop_exit {cfg.train.stop_exit!r} must be one of {', '.join(STOP_EXIT_CODES)}")
    if cfg.log.progress not in ("auto", "on", "off"):
        raise UserError("log.progress must be auto, on or off")
    if cfg.checkpoint.every < 1 or cfg.checkpoint.keep < 1:
        raise UserError("checkpoint.every and checkpoint.keep must be at least 1")
    if cfg.distributed.heartbeat_timeout < 1 or cfg.distributed.stop_check_every < 1:
        raise UserError("distributed.heartbeat_timeout and distributed.stop_check_every must be at least 1")
    if cfg.data.pack is not False:
        _check_pack(cfg)
    if cfg.data.tokenizer_kind is not None:
        from t5pegasus.text.load import check_kind

        check_kind(cfg.data.tokenizer_kind)
    # Every model.* key, the family and the preset, checked now (not after the data is prepared): the data only
    # adds the vocabulary size and the special ids.
    cfg.model_config()


def _check_pack(cfg: RunConfig) -> None:
    """data.pack: true, or row lengths by name; an objective or attention kind that cannot pack is refused now."""
    pack = cfg.data.pack
    if isinstance(pack, dict):
        names = ("source", "target", "length")
        bad = [k for k in pack if k not in names]
        if bad or not pack:
            raise UserError(f"data.pack row lengths are named {', '.join(names)}, not {', '.join(map(str, bad))}"
                            if bad else "data.pack={} names no row lengths; use data.pack=true")
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in pack.values()):
            raise UserError(f"data.pack row lengths must be positive integers: {pack}")
    from t5pegasus.training.objectives import KINDS, packing_problem  # imports JAX: only when packing

    if cfg.objective.kind in KINDS and (problem := packing_problem(cfg.objective.kind, cfg.model_config())):
        raise UserError(problem)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """['optim.learning_rate=1e-4', 'model.d_model=64'] -> nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UserError(f"override {pair!r} is not key=value (e.g. train.steps=200)")
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {pair!r} sets inside {part!r}, which is not a section")
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: `extra` wins; nested dicts merge key by key."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "points":
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


PACKAGED = "t5pegasus.configs"
DEFAULT_PRESET = "pretrain-demo"


def packaged_presets() -> list[str]:
    return sorted(p.name[:-5] for p in importlib.resources.files(PACKAGED).iterdir() if p.name.endswith(".yaml"))


def read_yaml(source: str | None) -> dict[str, Any]:
    """A packaged preset by name, or a YAML file path (None: the embedded default demo run)."""
    source = source or DEFAULT_PRESET
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"config file {path} does not exist (packaged presets: {', '.join(packaged_presets())})")
        text = path.read_text(encoding="utf-8")
    else:
        if source not in packaged_presets():
            raise UserError(f"unknown config preset {source!r}{_near(source, packaged_presets())}; give a YAML file "
                            f"or one of: {', '.join(packaged_presets())}")
        text = importlib.resources.files(PACKAGED).joinpath(f"{source}.yaml").read_text(encoding="utf-8")
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config {source} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"config {source} must be a YAML mapping of sections")
    return values


def load_values(source: str | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Preset/file + overrides as one nested dict, not yet validated. A `model.init` override replaces the file's
    model section (the model comes from that folder; model.* overrides beside it still apply); an overridden
    `model.family` or `objective.kind` brings the keys that must agree with it (`follow_overrides`)."""
    base, extra = read_yaml(source), parse_overrides(overrides or [])
    if isinstance(extra.get("model"), dict) and "init" in extra["model"]:
        base.pop("model", None)
    return merge(follow_overrides(base, extra, default=source is None), extra)


def load(source: str | None, overrides: list[str] | None = None) -> RunConfig:
    """Preset/file + overrides -> validated RunConfig."""
    return from_dict(load_values(source, overrides))


def follow_overrides(base: dict[str, Any], extra: dict[str, Any], *, default: bool = False) -> dict[str, Any]:
    """The keys that must agree with an overridden `model.family` or `objective.kind`, made to agree.

    A new family brings its packaged run preset (`Family.run_config`): the whole run when `base` is the
    default demo, else its model section, objective and data task and lengths. A new objective kind alone
    brings its first data task when the base's cannot feed it. Keys the overrides set win (merged after)."""
    model = extra.get("model") if isinstance(extra.get("model"), dict) else {}
    wanted = model.get("family")
    if wanted and "init" not in model and wanted != (base.get("model") or {}).get("family", "t5"):
        from t5pegasus import families

        run_config = families.get(wanted).run_config
        if run_config is None:
            return {**base, "model": {"family": wanted}}
        preset = read_yaml(run_config)
        if default:
            return preset
        out = copy.deepcopy(base)
        out["model"] = preset["model"]
        out["objective"] = {**(out.get("objective") or {}), "kind": preset["objective"]["kind"]}
        out["data"] = {**(out.get("data") or {}),
                       **{k: v for k, v in preset["data"].items() if k in ("task", "max_len", "max_source_len",
                                                                         "max_target_len")}}
        return out
    kind = (extra.get("objective") or {}).get("kind")
    if kind and "task" not in (extra.get("data") or {}):
        from t5pegasus.training.objectives import KINDS

        tasks = KINDS[kind].data_tasks if kind in KINDS else ()
        task = (base.get("data") or {}).get("task", DataConfig.task)
        if tasks and task not in tasks:
            return merge(base, {"data": {"task": tasks[0]}})
    return base


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        if isinstance(v, dict) and k != "points":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose values differ between a checkpointed run's config and this one (resumable keys excepted)."""
    a, b = flatten(saved), flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE):
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs
