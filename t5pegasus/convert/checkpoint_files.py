"""Reading HF-style checkpoint folders: config.json plus safetensors (single or sharded) or pytorch_model.bin."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from t5pegasus.errors import UserError, unreadable


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


def read_native_config(folder: Path, name: str, kind: str) -> tuple[Path, dict]:
    """(path, contents) of the config file `name` a `kind` checkpoint keeps beside its tensors (a TF
    checkpoint's `bert_config.json`, `hparams.json`); a missing one is a UserError."""
    path = folder / name
    if not path.is_file():
        raise UserError(f"{folder}: {name} is missing; a {kind} checkpoint needs it beside (or give our "
                        "t5pegasus_config.json)")
    return path, read_json(path)


@contextlib.contextmanager
def config_fields(path: Path, hint: str = "") -> Iterator[None]:
    """Reading fields of the config file at `path`: a KeyError becomes a UserError naming the missing field,
    followed by `hint`."""
    try:
        yield
    except KeyError as e:
        raise UserError(f"{path}: field {e.args[0]!r} is missing{hint}") from None


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    out = {}
    try:
        with safe_open(str(path), framework="flax") as f:
            for key in f.keys():
                out[key] = np.asarray(f.get_tensor(key), dtype=np.float32)
    except (SafetensorError, OSError, ValueError) as e:
        raise unreadable(path, e, "safetensors file") from None
    return out


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise UserError(f"{path} is a PyTorch file; install the torch extra: pip install 't5pegasus[torch]'") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        raise unreadable(path, e, "PyTorch file") from None
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


def read_state_dict(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a HF checkpoint folder as float32 numpy arrays, keyed by their PyTorch names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder (expected a HF transformers model folder)")
    for index_name, reader in (("model.safetensors.index.json", _read_safetensors),
                               ("pytorch_model.bin.index.json", _read_torch_bin)):
        index = folder / index_name
        if index.exists():
            tensors: dict[str, np.ndarray] = {}
            for shard in sorted(set(read_json(index)["weight_map"].values())):
                tensors.update(reader(folder / shard))
            return tensors
    if (folder / "model.safetensors").exists():
        return _read_safetensors(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").exists():
        return _read_torch_bin(folder / "pytorch_model.bin")
    raise UserError(f"{folder} has no model.safetensors or pytorch_model.bin")


class TensorSource:
    """Named tensors that are taken one by one; the converter asks for each and reports what is left over."""

    def __init__(self, tensors: dict[str, np.ndarray], where: str):
        self.tensors = dict(tensors)
        self.where = where
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.tensors

    def prefix(self, prefix: str, name: str) -> str:
        """`prefix` when the tensors hold `prefix + name` (task models prefix their base model's names, e.g.
        `bert.`, `transformer.`), else the empty string."""
        return prefix if self.has(prefix + name) else ""

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor `name`, which must have `shape`; a missing or mis-shaped tensor is a clear UserError."""
        if name not in self.tensors:
            raise UserError(f"{self.where}: tensor {name!r} is missing (expected shape {shape})")
        value = self.tensors[name]
        if tuple(value.shape) != tuple(shape):
            raise UserError(f"{self.where}: tensor {name!r} has shape {tuple(value.shape)}, expected {shape}")
        self.used.add(name)
        return value

    def unused(self, ignore: tuple[str, ...] = ()) -> list[str]:
        return sorted(k for k in self.tensors if k not in self.used and not any(i in k for i in ignore))
