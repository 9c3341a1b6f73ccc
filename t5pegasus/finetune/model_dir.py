"""Open a model folder for fine-tuning or generation: (config, params, tokenizer) from any folder we write or read.

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
import json
import os
from pathlib import Path
from typing import Any

from t5pegasus.config import ConfigBase, load_config
from t5pegasus.errors import UserError
from t5pegasus.text.base import Tokenizer

TOKENIZER_FILES = ("vocab.txt", "spiece.model", "sentencepiece.model", "tokenizer.model")
INFO_FILE = "finetune.json"


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
    """`run` (a run folder or a best model), `hf`, or a UserError saying what a model folder holds."""
    from t5pegasus.convert.run import is_run_dir

    if not path.exists():
        raise UserError(f"model folder {path} does not exist")
    if is_run_dir(path) or is_run_dir(path / "best"):
        return "run"
    if (path / "config.json").is_file():
        return "hf"
    raise UserError(f"{path} is not a model folder: expected a training run (model_config.json + checkpoints/), "
                    f"a fine-tuned model (<run>/best) or a HF transformers folder (config.json)")


def find_tokenizer(path: Path, given: str | os.PathLike | None = None) -> Path:
    """The tokenizer file of a model folder: `given`, else `tokenizer.txt` (a file beside it wins over the
    recorded absolute path, so a copied folder still works), else a vocab.txt / sentencepiece model inside."""
    if given is not None:
        given = Path(given)
        if not given.is_file():
            raise UserError(f"tokenizer file {given} not found (give a vocab.txt or a sentencepiece .model)")
        return given
    record = path / "tokenizer.txt"
    if record.is_file():
        named = Path(record.read_text(encoding="utf-8").strip())
        for candidate in (path / named.name, named):
            if named.name and candidate.is_file():
                return candidate
        raise UserError(f"{record} names {named}, which does not exist; pass --tokenizer FILE")
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            return path / name
    raise UserError(f"no tokenizer in {path} (expected tokenizer.txt, {' or '.join(TOKENIZER_FILES)}); "
                    f"pass --tokenizer FILE")


def _tokenizer_kind(path: Path, info: dict[str, Any]) -> str:
    kind = info.get("tokenizer_kind")
    if kind in ("wordpiece", "sentencepiece", "cpm"):
        return kind
    return "sentencepiece" if path.suffix == ".model" else "wordpiece"


def align_special_ids(cfg: ConfigBase, tok: Tokenizer) -> ConfigBase:
    """The config with the tokenizer's special ids (those it has), checked to fit the vocabulary."""
    if cfg.family == "t5":
        ids = {"pad_token_id": tok.pad_id, "eos_token_id": tok.eos_id, "unk_token_id": tok.unk_id,
               "decoder_start_token_id": tok.decoder_start_id}
    elif cfg.family == "bert":
        ids = {"pad_token_id": tok.pad_id, "unk_token_id": tok.unk_id, "cls_token_id": tok.bos_id,
               "sep_token_id": tok.eos_id, "mask_token_id": tok.mask_id}
    else:
        ids = {"pad_token_id": tok.pad_id, "eos_token_id": tok.eos_id,
               "bos_token_id": tok.bos_id if tok.bos_id is not None else tok.eos_id}
    ids = {k: int(v) for k, v in ids.items() if v is not None}
    vocab = int(cfg.vocab_size)
    if tok.vocab_size > vocab:
        raise UserError(f"the tokenizer has {tok.vocab_size} tokens but the model only {vocab}; "
                        f"give the tokenizer the model was trained with (--tokenizer)")
    changed = {k: v for k, v in ids.items() if getattr(cfg, k) != v}
    return cfg.replace(**changed) if changed else cfg


def read_info(path: Path) -> dict[str, Any]:
    info = path / INFO_FILE
    return json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}


def load_model(path: str | os.PathLike, *, ema: bool = False, tokenizer: str | os.PathLike | None = None,
               with_params: bool = True) -> LoadedModel:
    """Config, params (latest checkpoint; EMA weights with `ema`) and tokenizer of a model folder."""
    from t5pegasus.text.load import load_tokenizer

    path = Path(path)
    kind = model_kind(path)
    if kind == "run" and (path / "best" / "model_config.json").is_file():
        path = path / "best"  # a fine-tuning run folder: its best model
    if ema and kind != "run":
        raise UserError(f"--ema needs a training run; {path} is a HF folder with one set of weights")
    info = read_info(path)
    tok_path = find_tokenizer(path, tokenizer)
    tok_kind = _tokenizer_kind(tok_path, info) if tokenizer is None else _tokenizer_kind(tok_path, {})
    tok = load_tokenizer(tok_path, kind=tok_kind)
    params = None
    if kind == "run":
        from t5pegasus.convert.run import load_run

        if with_params:
            cfg, params = load_run(path, ema=ema)
        else:
            cfg = load_config(path / "model_config.json")
    else:
        from t5pegasus.convert.hf import load_hf

        cfg, params = load_hf(path)
    return LoadedModel(align_special_ids(cfg, tok), params, tok, tok_path.resolve(), tok_kind, kind, info)
