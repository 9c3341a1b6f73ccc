"""What a model folder is, for every command that takes one: (config, params, tokenizer) from any folder we
write or read.

- a training run (`t5pegasus pretrain` / `finetune` output): `model_config.json`, the latest checkpoint (or its
  EMA with `ema=True`), the tokenizer named in `tokenizer.txt`;
- a fine-tuned best model (`<run>/best/`): the same layout (so `t5pegasus convert` reads it as a run), its
  tokenizer file inside, and `finetune.json` with the lengths it was trained with; a fine-tuning run folder
  stands for its `best/`;
- a HF transformers folder (`config.json`): `t5pegasus.convert.load_hf`, tokenizer `vocab.txt` / `spiece.model`;
- a TF checkpoint folder (`checkpoint`, `model.ckpt.*`), such as the T5 PEGASUS release: its bert4keras
  `config.json` turns the three T5 PEGASUS switches on (`t5pegasus.convert.tf.load_tf`), and its `vocab.txt` is
  the T5 PEGASUS tokenizer (jieba, HMM off, then WordPiece; decoding starts at [CLS] and stops at [SEP]);
- a Megatron checkpoint (CPM-LM).

Which of these a path is, is `t5pegasus.convert.detect.detect`, the one rule for every command.

A Google-BERT-named checkpoint does not say whether it is a plain BERT, a UniLM or a SimBERT (the released
SimBERT is read as a BERT); `model_kind` (`--model-kind`) states it once, by the family's `model_kinds`, and the
folders we write from it record it in their config.

A folder records its tokenizer's kind (wordpiece / sentencepiece / cpm) beside the file (`tokenizer.txt`); the
kind decides how text is cut (CPM-LM's .model is a sentencepiece model behind a jieba cut and the U+2582 /
U+2583 space / newline mapping), so every command reads it through `folder_tokenizer_kind`.

The config's special ids are aligned with the tokenizer's ([CLS]/[SEP] for BERT, bos/eos for GPT, ...), since the
tokenizer decides the ids the data holds and decoding stops at.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from t5pegasus import families
from t5pegasus.config import ConfigBase
from t5pegasus.errors import UserError
from t5pegasus.text.base import Tokenizer
from t5pegasus.training.run_folder import RunFolder


@dataclasses.dataclass
class LoadedModel:
    cfg: ConfigBase
    params: Any  # None when only the config was asked for
    tokenizer: Tokenizer
    tokenizer_path: Path
    tokenizer_kind: str
    kind: str  # one of t5pegasus.convert.detect.FORMATS
    info: dict[str, Any]  # finetune.json of a fine-tuned model ({} otherwise)


def model_format(path: Path) -> str:
    """Which format of model folder `path` is (`run`, `hf`, `tf`, `megatron`), or a UserError saying what a model
    folder holds."""
    from t5pegasus.convert.detect import detect

    return detect(path)


def read_weights(path: Path, kind: str, *, step: int | None = None, ema: bool = False,
                 num_heads: int | None = None) -> tuple[ConfigBase, Any]:
    """(config, params) of a model path of format `kind`: a run's checkpoint `step` (default: the latest; its
    EMA weights with `ema`), or the one set of weights a HF, TF or Megatron folder holds."""
    if ema and kind != "run":
        raise UserError(f"--ema needs a training run; {path} is a {kind} folder with one set of weights")
    if step is not None and kind != "run":
        raise UserError(f"--step needs a training run; {path} is a {kind} folder with one set of weights")
    if kind == "run":
        folder = RunFolder(path)
        if not folder.holds_run(path):
            folder = folder.best  # a fine-tuning run whose checkpoints are gone: its best model
        return folder.load_params(step=step, ema=ema)
    if kind == "hf":
        from t5pegasus.convert.hf import load_hf

        return load_hf(path)
    if kind == "tf":
        from t5pegasus.convert.tf import load_tf

        return load_tf(path)
    if kind == "megatron":
        from t5pegasus.convert.megatron import load_megatron

        return load_megatron(path, num_heads=num_heads)
    raise UserError(f"unknown model format {kind!r}")


def as_model_kind(cfg: ConfigBase, kind: str | None) -> ConfigBase:
    """`cfg` used as model kind `kind` (the family's `model_kinds`, e.g. BERT's `simbert`: the UniLM mask and a
    linear pooler); None leaves it as read."""
    if kind is None:
        return cfg
    changes = {k: v for k, v in families.of(cfg).model_kind(kind).items() if getattr(cfg, k) != v}
    return cfg.replace(**changes) if changes else cfg


def folder_tokenizer_kind(folder: RunFolder, path: Path, fmt: str, *, given: str | None = None,
                   own: bool = True) -> str:
    """The kind of the tokenizer file `path` used with the model folder `folder` of format `fmt`: `given`
    (--tokenizer-kind), else what the folder records (`tokenizer.txt`, or an older fine-tuned model's
    finetune.json) when `path` is its `own` tokenizer, else a Megatron checkpoint's sentencepiece model is
    CPM-LM's (cpm), else the file's suffix (`t5pegasus.text.load.kind_for_file`)."""
    from t5pegasus.convert.megatron import SENTENCEPIECE_KIND
    from t5pegasus.text.load import check_kind, kind_for_file

    if given:
        return check_kind(given)
    recorded = folder.recorded_tokenizer_kind() if own else None
    if recorded:
        return check_kind(recorded)
    if fmt == "megatron" and path.suffix == ".model":
        return SENTENCEPIECE_KIND
    return kind_for_file(path)


def open_tokenizer(folder: RunFolder, fmt: str, tokenizer: str | os.PathLike | None = None,
                   tokenizer_kind: str | None = None) -> tuple[Tokenizer, Path, str]:
    """(tokenizer, its file, its kind) of the model folder `folder` of format `fmt`: `tokenizer` instead of its
    own file, `tokenizer_kind` instead of the kind it records (see `folder_tokenizer_kind`)."""
    from t5pegasus.text.load import load_tokenizer

    path = folder.tokenizer_file(tokenizer)
    kind = folder_tokenizer_kind(folder, path, fmt, given=tokenizer_kind, own=tokenizer is None)
    return load_tokenizer(path, kind=kind), path, kind


def model_section(cfg: ConfigBase) -> dict[str, Any]:
    """A model config as a run config's model section (the run's train.dtype decides the compute dtype)."""
    values = cfg.to_dict()
    values.pop("dtype")
    return values


def align_special_ids(cfg: ConfigBase, tok: Tokenizer) -> ConfigBase:
    """The config with the tokenizer's special ids (those it has), checked to fit the vocabulary."""
    ids = families.of(cfg).special_ids(tok.special_ids)
    vocab = int(cfg.vocab_size)
    if tok.vocab_size > vocab:
        raise UserError(f"the tokenizer has {tok.vocab_size} tokens but the model only {vocab}; "
                        f"give the tokenizer the model was trained with (--tokenizer)")
    changed = {k: v for k, v in ids.items() if getattr(cfg, k) != v}
    return cfg.replace(**changed) if changed else cfg


def load_model(path: str | os.PathLike, *, ema: bool = False, tokenizer: str | os.PathLike | None = None,
               with_params: bool = True, model_kind: str | None = None,
               tokenizer_kind: str | None = None) -> LoadedModel:
    """Config, params (latest checkpoint; EMA weights with `ema`) and tokenizer of a model folder (`tokenizer`
    instead of its own, `tokenizer_kind` instead of the kind it records), used as `model_kind` when given (see
    `as_model_kind`)."""
    from t5pegasus.convert.detect import model_dir

    path = Path(path)
    kind = model_format(path)
    folder = model_dir(path)
    if kind == "run" and RunFolder.holds_run(folder.best.path):
        folder = folder.best  # a fine-tuning run folder: its best model
        path = folder.path
    info = folder.info()
    tok, tok_path, tok_kind = open_tokenizer(folder, kind, tokenizer, tokenizer_kind)
    if kind == "run" and not with_params:
        cfg, params = folder.model_config(), None
    else:
        cfg, params = read_weights(path, kind, ema=ema)
    cfg = as_model_kind(cfg, model_kind)
    return LoadedModel(align_special_ids(cfg, tok), params, tok, tok_path.resolve(), tok_kind, kind, info)
