"""What a model folder is, for every command that takes one: (config, params, tokenizer) from any folder we
write or read.

- a training run (`t5pegasus pretrain` / `finetune` output): `model_config.json`, the latest checkpoint (or its
  EMA with `ema=True`), the tokenizer named in `tokenizer.txt`;
- a fine-tuned best model (`<run>/best/`): the same layout (so `t5pegasus convert` reads it as a run), its
  tokenizer file inside, and `finetune.json` with the lengths it was trained with; a fine-tuning run folder
  stands for its `best/`;
- a HF transformers folder (`config.json`): `t5pegasus.convert.load_hf`, tokenizer `vocab.txt` / `spiece.model`.

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
    kind: str  # run | hf
    info: dict[str, Any]  # finetune.json of a fine-tuned model ({} otherwise)


def model_kind(path: Path) -> str:
    """`run` (a run folder or a fine-tuning run with its best model), `hf`, or a UserError saying what a model
    folder holds."""
    if not path.exists():
        raise UserError(f"model folder {path} does not exist")
    if RunFolder.holds_run(path) or RunFolder.holds_run(path / "best"):
        return "run"
    if (path / "config.json").is_file():
        return "hf"
    raise UserError(f"{path} is not a model folder: expected a training run (model_config.json + checkpoints/), "
                    f"a fine-tuned model (<run>/best) or a HF transformers folder (config.json)")


def tokenizer_kind(path: Path, info: dict[str, Any]) -> str:
    """The tokenizer kind a folder recorded, else the one its file suffix implies."""
    kind = info.get("tokenizer_kind")
    if kind in ("wordpiece", "sentencepiece", "cpm"):
        return kind
    return "sentencepiece" if path.suffix == ".model" else "wordpiece"


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
               with_params: bool = True) -> LoadedModel:
    """Config, params (latest checkpoint; EMA weights with `ema`) and tokenizer of a model folder."""
    from t5pegasus.text.load import load_tokenizer

    path = Path(path)
    kind = model_kind(path)
    folder = RunFolder(path)
    if kind == "run" and RunFolder.holds_run(folder.best.path):
        folder = folder.best  # a fine-tuning run folder: its best model
        path = folder.path
    if ema and kind != "run":
        raise UserError(f"--ema needs a training run; {path} is a HF folder with one set of weights")
    info = folder.info()
    tok_path = folder.tokenizer_file(tokenizer)
    tok_kind = tokenizer_kind(tok_path, info if tokenizer is None else {})
    tok = load_tokenizer(tok_path, kind=tok_kind)
    params = None
    if kind == "run":
        if with_params:
            cfg, params = folder.load_params(ema=ema)
        else:
            cfg = folder.model_config()
    else:
        from t5pegasus.convert.hf import load_hf

        cfg, params = load_hf(path)
    return LoadedModel(align_special_ids(cfg, tok), params, tok, tok_path.resolve(), tok_kind, kind, info)
