"""Checkpoint converters: HF transformers (PyTorch / safetensors); TF and Megatron come in their modules."""

from t5pegasus.convert.hf import load_hf

__all__ = ["load_hf"]
