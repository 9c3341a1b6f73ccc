"""What a family's converter provides, as records the format-generic code (hf.py, hf_export.py, tf.py) calls.

Each family converter module ends with a `FORMAT` record (`HFFormat` in `<family>_hf.py`, `TFFormat` in
`<family>_tf.py`), which its `t5pegasus.families` record names. The generic code never asks which family it
holds: what differs between families is a field here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from t5pegasus.config import ConfigBase
from t5pegasus.convert.checkpoint_files import TensorSource
from t5pegasus.convert.name_map import Entry

Tensors = dict[str, np.ndarray]


def _nothing_lost(cfg: ConfigBase) -> str | None:
    return None


def _no_tensors(cfg: ConfigBase, params: Any) -> Tensors:
    return {}


def _unchanged(cfg: ConfigBase, params: dict[str, Any], exact: Tensors) -> dict[str, Any]:
    return params


def _no_remote_code(cfg: ConfigBase) -> RemoteCode | None:
    return None


@dataclasses.dataclass(frozen=True)
class RemoteCode:
    """Modelling code an HF export ships for what HF's own classes lack, loaded with `trust_remote_code=True`.

    `file` is a module in `t5pegasus/convert/hf_remote/`, copied into the folder; `config` are the keys it adds
    to config.json (`auto_map` naming the file's classes, and the switches the code reads). The folder keeps
    its HF `model_type`, so it still loads without the code (and without what the code adds).
    """

    file: str
    config: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class HFFormat:
    """A family's mapping to HF transformers.

    `config_from_hf(hf_config, tensors)` / `params_from_hf(cfg, tensors)` import; `config_to_hf(cfg)` /
    `params_to_hf(cfg, params)` export (torch layout, every key HF expects). `lossy(cfg)` says what HF's own
    model classes cannot express (a sentence; None when exact), and `loss_effect(cfg, params)` measures what
    that costs (computed only once the export goes ahead). `remote_code(cfg)` is the code that computes it
    anyway (None: there is none, and a lossy export needs `allow_lossy`). `exact_tensors(cfg, params)` are kept
    beside the export so a re-import is bit-exact, and `restore_exact(cfg, params, tensors)` puts them back.
    """

    config_from_hf: Callable[[dict[str, Any], TensorSource], ConfigBase]
    params_from_hf: Callable[[Any, TensorSource], dict[str, Any]]
    config_to_hf: Callable[[Any], dict[str, Any]]
    params_to_hf: Callable[[Any, dict[str, Any]], Tensors]
    lossy: Callable[[Any], str | None] = _nothing_lost
    loss_effect: Callable[[Any, Any], str] | None = None
    exact_tensors: Callable[[Any, Any], Tensors] = _no_tensors
    restore_exact: Callable[[Any, dict[str, Any], Tensors], dict[str, Any]] = _unchanged
    remote_code: Callable[[Any], RemoteCode | None] = _no_remote_code


@dataclasses.dataclass(frozen=True)
class TFFormat:
    """A family's TF checkpoint layout in its original release's names.

    `label` names the layout in messages; `root` is a tensor that only this family's checkpoints hold (how a
    checkpoint's family is detected). `entries(cfg, t5_norm)` is the name map (`t5_norm` picks T5's norm
    spelling; other families ignore it); `check_exportable(cfg)` refuses what the names cannot hold;
    `native_config(cfg)` are the release's own config files; `config_from_native(folder, tensors)` reads them.
    """

    label: str
    root: str
    entries: Callable[[Any, str | None], list[Entry]]
    check_exportable: Callable[[Any], None]
    native_config: Callable[[Any], dict[str, dict[str, Any]]]
    config_from_native: Callable[[Path, TensorSource], ConfigBase]
