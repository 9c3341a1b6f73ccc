"""The run folder: the one place that knows its layout. `pretrain` and `finetune` write it; every reader
(`convert`, `generate`, `evaluate`, `finetune --init`) finds things in it through this module.

    <run>/config.yaml                  the run config (a resume must match it; the EMA momentum is read here)
    <run>/model_config.json            the model config
    <run>/tokenizer.txt                the tokenizer file's path (a file of that name inside the folder wins),
                                       then its kind (wordpiece / sentencepiece / cpm) on a second line; HF
                                       and TF exports hold one too, naming their shipped file
    <run>/checkpoints/<step>/state     orbax TrainState (params, opt_state, ema); `data` beside it holds
                                       the global data position (batches read)
    <run>/finetune.json                what a fine-tuning run was asked (lengths, objective, decoding)
    <run>/revocab.json                 a run started from a model with another vocabulary: how its rows were set
    <run>/best/                        a fine-tuning run's best model: itself a run folder (params-only state,
                                       its tokenizer file inside, metrics.json with the dev scores)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from t5pegasus.config import ConfigBase, load_config
from t5pegasus.errors import UserError, root_cause, unreadable
from t5pegasus.fileio import write_text

RUN_CONFIG = "config.yaml"
MODEL_CONFIG = "model_config.json"
TOKENIZER_RECORD = "tokenizer.txt"
CHECKPOINTS = "checkpoints"
STATE = "state"
INFO = "finetune.json"
REVOCAB = "revocab.json"
METRICS = "metrics.json"
BEST = "best"
# Tokenizer files a folder may hold itself (a HF folder or a copied run), in the order they are looked for.
TOKENIZER_FILES = ("vocab.txt", "spiece.model", "sentencepiece.model", "tokenizer.model")


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """A run folder at `path` (it need not exist yet)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # --- what it is -------------------------------------------------------------------------------------
    @staticmethod
    def holds_run(path: str | os.PathLike) -> bool:
        """Whether `path` is a run folder (a model config and a checkpoints folder)."""
        path = Path(path)
        return (path / MODEL_CONFIG).is_file() and (path / CHECKPOINTS).is_dir()

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def best(self) -> RunFolder:
        return RunFolder(self.path / BEST)

    def state_dir(self, step: int) -> Path:
        return (self.checkpoints / str(step) / STATE).absolute()

    def steps(self) -> list[int]:
        """The finished checkpoint steps, ascending (a step folder without its state is not one)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(p.name) for p in self.checkpoints.iterdir() if p.name.isdigit() and (p / STATE).is_dir())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    # --- configs ----------------------------------------------------------------------------------------
    def write_run_config(self, text: str) -> None:
        write_text(self.path / RUN_CONFIG, text)

    def run_config(self) -> dict[str, Any] | None:
        """The saved run config as a dict (None when there is none)."""
        import yaml

        path = self.path / RUN_CONFIG
        return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else None

    def ema_momentum(self) -> float:
        """The EMA momentum the run trained with (0 when it kept no EMA)."""
        values = self.run_config()
        if values is None:
            raise UserError(f"{self.path / RUN_CONFIG} is missing: the EMA momentum of this run is unknown")
        return float((values.get("optim") or {}).get("ema", 0.0) or 0.0)

    def write_model_config(self, cfg: ConfigBase) -> None:
        cfg.save(self.path / MODEL_CONFIG)

    def model_config(self) -> ConfigBase:
        return load_config(self.path / MODEL_CONFIG)

    def write_info(self, info: dict[str, Any]) -> None:
        write_text(self.path / INFO, json.dumps(info, ensure_ascii=False, indent=2) + "\n")

    def info(self) -> dict[str, Any]:
        """finetune.json ({} for a pretraining run or a foreign folder)."""
        return _json(self.path / INFO) or {}

    def write_revocab_report(self, report: dict[str, Any]) -> None:
        write_text(self.path / REVOCAB, json.dumps(report, ensure_ascii=False, indent=2) + "\n")

    def revocab_report(self) -> dict[str, Any] | None:
        """revocab.json of a run that started from a re-vocabularised model (None otherwise)."""
        return _json(self.path / REVOCAB)

    def metrics(self) -> dict[str, Any] | None:
        """metrics.json of a best model (None when there is none)."""
        return _json(self.path / METRICS)

    # --- tokenizer --------------------------------------------------------------------------------------
    def write_tokenizer_record(self, tokenizer_path: str | os.PathLike, kind: str | None = None) -> None:
        """Record the tokenizer file (its path) and its kind (`t5pegasus.text.load.KINDS`)."""
        write_text(self.path / TOKENIZER_RECORD, f"{tokenizer_path}\n" + (f"{kind}\n" if kind else ""))

    def recorded_tokenizer_kind(self) -> str | None:
        """The tokenizer kind `tokenizer.txt` records (None: it records none, or there is no record); older
        fine-tuned models kept it in finetune.json only."""
        record = self.path / TOKENIZER_RECORD
        lines = record.read_text(encoding="utf-8").split("\n") if record.is_file() else []
        kind = lines[1].strip() if len(lines) > 1 else ""
        return kind or self.info().get("tokenizer_kind") or None

    def tokenizer_file(self, given: str | os.PathLike | None = None) -> Path:
        """The tokenizer file: `given`, else the one `tokenizer.txt` names (a file of that name inside the folder
        wins over the recorded absolute path, so a copied folder still works), else a tokenizer file inside."""
        if given is not None:
            given = Path(given)
            if not given.is_file():
                raise UserError(f"tokenizer file {given} not found (give a vocab.txt or a sentencepiece .model)")
            return given
        record = self.path / TOKENIZER_RECORD
        if record.is_file():
            named = Path(record.read_text(encoding="utf-8").split("\n")[0].strip())
            for candidate in (self.path / named.name, named):
                if named.name and candidate.is_file():
                    return candidate
            raise UserError(f"{record} names {named}, which does not exist; pass --tokenizer FILE")
        for name in TOKENIZER_FILES:
            if (self.path / name).is_file():
                return self.path / name
        raise UserError(f"no tokenizer in {self.path} (expected {TOKENIZER_RECORD}, {' or '.join(TOKENIZER_FILES)});"
                        f" pass --tokenizer FILE")

    # --- weights ----------------------------------------------------------------------------------------
    def load_params(self, step: int | None = None, ema: bool = False) -> tuple[ConfigBase, Any]:
        """(model config, params) of checkpoint `step` (default: the latest), restored onto one local device
        whatever mesh wrote it; with `ema`, the bias-corrected average weights (an error if the run kept none)."""
        import jax
        import orbax.checkpoint as ocp

        from t5pegasus.training.state import ema_params

        if not self.holds_run(self.path):
            raise UserError(f"{self.path} is not a training run folder (no {MODEL_CONFIG} and {CHECKPOINTS}/)")
        cfg = self.model_config()
        latest = self.latest_step()
        if latest is None:
            raise UserError(f"{self.checkpoints} holds no finished checkpoint; train longer or pick another run")
        step = latest if step is None else step
        path = self.state_dir(step)
        if not path.is_dir():
            raise UserError(f"{path} does not exist; steps here: {latest} is the latest")
        with ocp.PyTreeCheckpointer() as checkpointer:
            try:
                metadata = checkpointer.metadata(path).item_metadata
                if metadata is None:  # _METADATA cut short or missing
                    raise ValueError("its metadata cannot be read")
                if ema and not metadata.tree.get("ema"):
                    raise UserError(f"run {self.path} kept no EMA of the weights (optim.ema is 0); export "
                                    "without --ema")
                device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
                # Only the weights (and their average): the optimizer moments would triple the memory.
                wanted = {k: metadata.tree[k] for k in (("params", "ema") if ema else ("params",))}
                target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), wanted)
                state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
                    item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True))
            except UserError:
                raise
            except Exception as e:  # orbax raises plain Exception around tensorstore's OUT_OF_RANGE / DATA_LOSS
                raise unreadable(path, root_cause(e), "checkpoint") from None
        if not ema:
            return cfg, state["params"]
        saved = state["ema"]
        average = ema_params(SimpleNamespace(ema=SimpleNamespace(count=saved["count"], ema=saved["ema"]),
                                             params=state["params"]), self.ema_momentum())
        return cfg, average

    def save_model(self, step: int, params: Any, cfg: ConfigBase, tokenizer_path: Path, info: dict[str, Any],
                   metrics: dict[str, Any]) -> None:
        """Write this folder as a self-contained model in the run layout (params-only state at `step`, the
        tokenizer file inside with its kind `info["tokenizer_kind"]`, info and metrics). Built beside the folder
        and swapped in by renames, so a reader sees the old or the new model, never a half-written one. Every
        process takes part (orbax writes sharded arrays)."""
        import jax
        import orbax.checkpoint as ocp

        lead = jax.process_index() == 0
        folder = self.path
        tmp = RunFolder(folder.with_name(f".{folder.name}.tmp"))  # one name for every process
        if lead:
            shutil.rmtree(tmp.path, ignore_errors=True)
        _sync("t5pegasus model folder: clean")
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp.state_dir(step), {"params": params})
        if lead:
            name = "spiece.model" if tokenizer_path.suffix == ".model" else "vocab.txt"
            shutil.copyfile(tokenizer_path, tmp.path / name)
            tmp.write_tokenizer_record((folder / name).absolute(), info.get("tokenizer_kind"))
            tmp.write_model_config(cfg)
            tmp.write_info(info)
            write_text(tmp.path / METRICS, json.dumps(metrics, ensure_ascii=False, indent=2) + "\n")
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp.path, folder)
            shutil.rmtree(old, ignore_errors=True)
        _sync("t5pegasus model folder: written")


def _sync(name: str) -> None:
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
