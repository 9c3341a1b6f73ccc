"""t5pegasus: T5 PEGASUS, mT5, UniLM and GPT in JAX/Flax — pretrain, fine-tune, convert, generate.

    import t5pegasus as tp
    cfg = tp.T5Config.preset("t5-pegasus-small")
    model = tp.models.T5(cfg)

Submodules (models, attention, convert, training, ...) are imported on first use, so the command line
starts quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {"attention", "models", "text", "pretrain", "training", "convert", "finetune", "decoding", "config",
               "families"}
_CONFIG_NAMES = {"T5Config": "families", "BertConfig": "families", "GPTConfig": "families", "load_config": "config"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"t5pegasus.{name}")
    if name in _CONFIG_NAMES:
        return getattr(importlib.import_module(f"t5pegasus.{_CONFIG_NAMES[name]}"), name)
    if name == "UserError":
        from t5pegasus.errors import UserError

        return UserError
    raise AttributeError(f"module 't5pegasus' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES | set(_CONFIG_NAMES) | {"UserError"})
