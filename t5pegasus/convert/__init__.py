"""Checkpoint converters: HF transformers (PyTorch / safetensors) and TF checkpoints both ways; Megatron in its module.

`load_model(path)` opens any model folder (a run, a fine-tuned model, HF, a TF checkpoint such as the T5 PEGASUS
release, Megatron) with its tokenizer, as every command does; `load_hf`, `save_hf`, `load_tf` and `save_tf` read and
write one format. All are imported on first use, so `t5pegasus --help` loads neither JAX nor TensorFlow.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_hf", "load_model", "load_tf", "save_hf", "save_tf"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from t5pegasus.convert.model_folder import load_model

        return load_model
    if name == "load_hf":
        from t5pegasus.convert.hf import load_hf

        return load_hf
    if name == "save_hf":
        from t5pegasus.convert.hf_export import save_hf

        return save_hf
    if name in ("load_tf", "save_tf"):
        from t5pegasus.convert import tf

        return getattr(tf, name)
    raise AttributeError(f"module 't5pegasus.convert' has no attribute {name!r}")
