"""Checkpoint converters: HF transformers (PyTorch / safetensors) both ways; TF and Megatron in their modules.

`load_hf` and `save_hf` are imported on first use, so `t5pegasus --help` does not load JAX.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_hf", "save_hf"]


def __getattr__(name: str) -> Any:
    if name == "load_hf":
        from t5pegasus.convert.hf import load_hf

        return load_hf
    if name == "save_hf":
        from t5pegasus.convert.hf_export import save_hf

        return save_hf
    raise AttributeError(f"module 't5pegasus.convert' has no attribute {name!r}")
