"""Supervised fine-tuning (seq2seq / GPT lm / UniLM) through the training loop, ROUGE / BLEU on the dev set.

    from t5pegasus.finetune import FinetuneSpec, finetune, Predictor, score
    result = finetune(FinetuneSpec(init="runs/pre", train="train.jsonl", dev="dev.jsonl", output="runs/ft"))

Names are imported on first use. Opening a model folder is `t5pegasus.convert.model_folder.load_model`.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "FinetuneSpec": "run", "FinetuneResult": "run", "finetune": "run",
    "Predictor": "predict", "score": "metrics", "metric_tokens": "metrics",
    "read_pairs": "data", "Pair": "data",
}  # fmt: skip

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"t5pegasus.finetune.{_NAMES[name]}"), name)
    raise AttributeError(f"module 't5pegasus.finetune' has no attribute {name!r}")
