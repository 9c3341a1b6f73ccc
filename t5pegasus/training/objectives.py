"""Objectives: what a batch means to a model. An objective = (model, init from a batch, batch -> loss sums).

The trainer only calls `init` and `loss`; the T5 PEGASUS seq2seq objective, GPT next-token LM and UniLM
(BERT with a seq2seq mask) plug in by name (`objective.kind` in a run config).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax import Array

from t5pegasus.errors import UserError
from t5pegasus.training.losses import TokenSums, cross_entropy

Batch = Mapping[str, Array]
# batch, deterministic -> (positional args, keyword args) of the model's __call__
CallArgs = Callable[[Batch, bool], tuple[tuple, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A model plus how a batch drives it: `loss(params, batch, rng)` -> TokenSums over target tokens."""

    name: str
    model: nn.Module
    call_args: CallArgs
    fields: Mapping[str, str]  # batch field -> which length it has ("source", "target", "length")
    label_smoothing: float = 0.0
    z_loss: float = 0.0

    def dummy_batch(self, batch_size: int, lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
        """An all-ones batch of the shapes this objective reads (for initialisation and FLOP counting)."""
        return {f: np.ones((batch_size, lengths[kind]), np.int32) for f, kind in self.fields.items()}

    def init(self, rng: Array, batch: Batch) -> Any:
        """Boxed (logically partitioned) parameters for a batch of this shape (same as `model.init`)."""
        args, kwargs = self.call_args(batch, True)
        return self.model.init(rng, *args, **kwargs)["params"]

    def logits(self, params: Any, batch: Batch, rng: Array | None = None, deterministic: bool = True) -> Array:
        args, kwargs = self.call_args(batch, deterministic)
        # "features": Performer's random features, redrawn every training step (docs/attention.md).
        rngs = None if deterministic or rng is None else {"dropout": rng, "features": jax.random.fold_in(rng, 1)}
        out = self.model.apply({"params": params}, *args, **kwargs, rngs=rngs)
        return getattr(out, "logits", out)  # BERT returns a BertOutput

    def loss(self, params: Any, batch: Batch, rng: Array | None = None, deterministic: bool = False) -> TokenSums:
        logits = self.logits(params, batch, rng, deterministic)
        return cross_entropy(logits, batch["targets"], batch.get("weights"), label_smoothing=self.label_smoothing,
                             z_loss=self.z_loss)


def _seq2seq_args(batch: Batch, deterministic: bool) -> tuple[tuple, dict[str, Any]]:
    mask = batch["encoder_mask"].astype(bool) if "encoder_mask" in batch else None
    return (batch["encoder_ids"], batch["decoder_ids"]), {"encoder_mask": mask, "deterministic": deterministic}


def _lm_args(batch: Batch, deterministic: bool) -> tuple[tuple, dict[str, Any]]:
    return (batch["ids"],), {"deterministic": deterministic}


def _unilm_args(batch: Batch, deterministic: bool) -> tuple[tuple, dict[str, Any]]:
    return (batch["ids"], batch["segment_ids"]), {"deterministic": deterministic}


# kind -> (model family, forward, batch fields -> length name)
KINDS: dict[str, tuple[str, CallArgs, dict[str, str]]] = {
    "seq2seq": ("t5", _seq2seq_args, {"encoder_ids": "source", "encoder_mask": "source", "decoder_ids": "target",
                                         "targets": "target", "weights": "target"}),
    "lm": ("gpt", _lm_args, {"ids": "length", "targets": "length", "weights": "length"}),
    "unilm": ("bert", _unilm_args, {"ids": "length", "segment_ids": "length", "targets": "length",
                                       "weights": "length"}),
}
MODEL_CLASSES = {"t5": "T5", "gpt": "GPT", "bert": "Bert"}
TASK_OF_KIND = {"seq2seq": ("seq2seq", "pegasus"), "lm": ("lm",), "unilm": ("unilm",)}


def make_objective(kind: str, model_cfg: Any, *, label_smoothing: float = 0.0, z_loss: float = 0.0) -> Objective:
    """The objective `kind` over a model built from `model_cfg` (its family must suit the objective)."""
    from t5pegasus import models

    if kind not in KINDS:
        raise UserError(f"unknown objective {kind!r}; choose one of: {', '.join(KINDS)}")
    family, call_args, fields = KINDS[kind]
    if model_cfg.family != family:
        raise UserError(f"objective {kind!r} trains a {family} model, but the model config is a {model_cfg.family}")
    cls = getattr(models, MODEL_CLASSES[family], None)
    if cls is None:
        raise UserError(f"objective {kind!r} needs the {MODEL_CLASSES[family]} model, which this install lacks")
    if kind == "unilm" and getattr(model_cfg, "attention", "unilm") != "unilm":
        raise UserError(f"objective unilm needs a BERT with attention='unilm' (set model.attention=unilm), "
                        f"not {model_cfg.attention!r}")
    return Objective(kind, cls(model_cfg), call_args, fields, label_smoothing, z_loss)


def batch_lengths(batch: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Tokens per example of a batch: source+target for seq2seq, sequence length otherwise."""
    if "encoder_ids" in batch:
        return {"source": batch["encoder_ids"].shape[1], "target": batch["decoder_ids"].shape[1]}
    return {"length": batch["ids"].shape[1]}


def to_model_batch(batch: Mapping[str, np.ndarray], obj: Objective) -> dict[str, np.ndarray]:
    """Keep the fields the objective reads (a loader batch can carry more)."""
    missing = [f for f in obj.fields if f not in batch]
    if missing:
        raise UserError(f"the dataset's batches lack {', '.join(missing)} needed by objective {obj.name!r}; "
                        f"prepare the data with a matching --task ({'/'.join(TASK_OF_KIND[obj.name])})")
    return {f: np.asarray(batch[f], np.int32) for f in obj.fields}


