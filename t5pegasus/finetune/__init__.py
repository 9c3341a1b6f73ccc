"""Supervised fine-tuning (seq2seq / GPT lm / UniLM) through the training loop, ROUGE / BLEU, generation CLIs.

    from t5pegasus.finetune import FinetuneSpec, finetune, load_model, Predictor, score
    result = finetune(FinetuneSpec(init="runs/pre", train="train.jsonl", dev="dev.jsonl", output="runs/ft"))

Names are imported on first use, so the command line's `--help` stays fast.
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
