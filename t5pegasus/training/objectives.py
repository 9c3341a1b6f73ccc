"""Objectives: what a batch means to a model. An objective = (model, init from a batch, batch -> loss sums).

The trainer only calls `init` and `loss`; the T5 PEGASUS seq2seq objective, GPT next-token LM, UniLM
(BERT with a seq2seq mask) and SimBERT (UniLM plus the in-batch similarity of sentence vectors,
`training/simbert.py`) plug in by name (`objective.kind` in a run config). A kind that packs (`data.pack`)
names the extra fields of a packed batch (segment ids and per-example positions); its model call passes them.
A model with a label embedding (BERT `num_conditions`) also reads `label` ([b, 1], the row of each example's
condition label) on the kinds that take one (`ObjectiveKind.labels`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax import Array

from t5pegasus import families
from t5pegasus.errors import UserError
from t5pegasus.pretrain.examples import LABEL
from t5pegasus.training import simbert
from t5pegasus.training.losses import TokenSums, cross_entropy

Batch = Mapping[str, Array]
# batch, deterministic -> (positional args, keyword args) of the model's __call__
CallArgs = Callable[[Batch, bool], tuple[tuple, dict[str, Any]]]
# model output, batch, label smoothing, z-loss -> TokenSums (an objective whose loss reads more than logits)
OutputLoss = Callable[[Any, Batch, float, float], TokenSums]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A model plus how a batch drives it: `loss(params, batch, rng)` -> TokenSums over target tokens."""

    name: str
    model: nn.Module
    call_args: CallArgs
    fields: Mapping[str, str]  # batch field -> which length it has ("source", "target", "length"; "row": [b, 1])
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    output_loss: OutputLoss | None = None  # None: token cross-entropy of the logits

    def dummy_batch(self, batch_size: int, lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
        """An all-ones batch of the shapes this objective reads (for initialisation and FLOP counting)."""
        return {f: np.ones((batch_size, 1) if kind == "row" else (batch_size, lengths[kind]), np.int32)
                for f, kind in self.fields.items()}

    def init(self, rng: Array, batch: Batch) -> Any:
        """Boxed (logically partitioned) parameters for a batch of this shape (same as `model.init`)."""
        args, kwargs = self.call_args(batch, True)
        return self.model.init(rng, *args, **kwargs)["params"]

    @property
    def loss_parts(self) -> tuple[str, str] | None:
        """What the log calls the parts of this objective's loss (see `ObjectiveKind.loss_parts`)."""
        return KINDS[self.name].loss_parts if self.name in KINDS else None

    def unpacked(self) -> Objective:
        """The same objective reading unpadded-per-example batches (no packing fields), e.g. for evaluation."""
        extra = KINDS[self.name].packed if self.name in KINDS else {}
        return dataclasses.replace(self, fields={f: k for f, k in self.fields.items() if f not in extra})

    def output(self, params: Any, batch: Batch, rng: Array | None = None, deterministic: bool = True) -> Any:
        """The model's whole output for a batch (logits; a BertOutput for BERT)."""
        args, kwargs = self.call_args(batch, deterministic)
        # "features": Performer's random features, redrawn every training step (docs/attention.md).
        rngs = None if deterministic or rng is None else {"dropout": rng, "features": jax.random.fold_in(rng, 1)}
        return self.model.apply({"params": params}, *args, **kwargs, rngs=rngs)

    def logits(self, params: Any, batch: Batch, rng: Array | None = None, deterministic: bool = True) -> Array:
        out = self.output(params, batch, rng, deterministic)
        return getattr(out, "logits", out)  # BERT returns a BertOutput

    def loss(self, params: Any, batch: Batch, rng: Array | None = None, deterministic: bool = False) -> TokenSums:
        out = self.output(params, batch, rng, deterministic)
        if self.output_loss is not None:
            return self.output_loss(out, batch, self.label_smoothing, self.z_loss)
        return cross_entropy(getattr(out, "logits", out), batch["targets"], batch.get("weights"),
                             label_smoothing=self.label_smoothing, z_loss=self.z_loss)


SEQ2SEQ_PACKED = {"encoder_segment_ids": "source", "encoder_positions": "source", "decoder_segment_ids": "target",
                  "decoder_positions": "target"}
LM_PACKED = {"segment_ids": "length", "positions": "length"}


def _seq2seq_args(batch: Batch, deterministic: bool) -> tuple[tuple, dict[str, Any]]:
    mask = batch["encoder_mask"].astype(bool) if "encoder_mask" in batch else None
    packed = {f: batch[f] for f in SEQ2SEQ_PACKED if f in batch}
    return (batch["encoder_ids"], batch["decoder_ids"]), {"encoder_mask": mask, "deterministic": deterministic,
                                                          **packed}


def _lm_args(batch: Batch, deterministic: bool) -> tuple[tuple, dict[str, Any]]:
    packed = {f: batch[f] for f in LM_PACKED if f in batch}
    return (batch["ids"],), {"deterministic": deterministic, **packed}


def _unilm_args(batch: Batch, deterministic: bool) -> tuple[tuple, dict[str, Any]]:
    return (batch["ids"], batch["segment_ids"]), {"deterministic": deterministic}


def _lm_mask(model_cfg: Any) -> str | None:
    mask = getattr(model_cfg, "mask", None)  # a BERT: only its causal mask is a left-to-right LM
    if mask is not None and mask != "causal":
        return (f"the lm objective trains a BERT as a left-to-right language model: it needs mask='causal' (set "
                f"model.mask=causal, or --model-kind lm), not {mask!r}")
    return None


def with_labels(call_args: CallArgs) -> CallArgs:
    """`call_args` that also hands the model each example's condition label (`labels` [b])."""

    def call(batch: Batch, deterministic: bool) -> tuple[tuple, dict[str, Any]]:
        args, kwargs = call_args(batch, deterministic)
        return args, {**kwargs, "labels": batch[LABEL][:, 0]}

    return call


def check_labels(model_cfg: Any, data_labels: int) -> None:
    """Refuse data whose examples carry condition labels (`data_labels` rows addressed; 0: none) that the model
    cannot take, and a model with a label embedding trained on data without labels."""
    rows = getattr(model_cfg, "num_conditions", 0)
    if data_labels and not rows:
        raise UserError(f"the data gives each example a condition label ({data_labels} labels) but the model has no "
                        "label embedding: set model.conditional_layer_norm=true, model.condition_size and "
                        f"model.num_conditions={data_labels} (BERT), or drop the labels")
    if rows and not data_labels:
        raise UserError(f"the model has a label embedding (num_conditions={rows}) but the data has no condition "
                        "labels: give every example a \"label\" field")
    if data_labels > rows:
        raise UserError(f"the data's condition labels address {data_labels} rows, the model's label embedding has "
                        f"{rows} (num_conditions)")


def _unilm_mask(model_cfg: Any) -> str | None:
    if getattr(model_cfg, "mask", None) != "unilm":
        return (f"a seq2seq BERT objective (unilm, simbert) needs mask='unilm' (set model.mask=unilm), not "
                f"{getattr(model_cfg, 'mask', None)!r}")
    return None


@dataclasses.dataclass(frozen=True)
class ObjectiveKind:
    """How one `objective.kind` reads a batch: the model's call, the batch fields (field -> which length it has),
    the prepared-data tasks whose examples carry those fields, a check of the model config (a message when
    the config cannot be trained this way), a check of the run config (same; e.g. how batches may be split),
    and the loss when it reads more of the output than the logits. Which families an objective trains is in
    their family records."""

    call_args: CallArgs
    fields: Mapping[str, str]
    data_tasks: tuple[str, ...]
    check: Callable[[Any], str | None] = lambda model_cfg: None
    packed: Mapping[str, str] = dataclasses.field(default_factory=dict)  # extra fields of a packed batch
    no_packing: str = ""  # why this kind does not pack (when `packed` is empty)
    check_run: Callable[[Any], str | None] = lambda run_cfg: None
    output_loss: OutputLoss | None = None
    # names the log gives the two parts of the loss: (loss - aux, aux) of its TokenSums; None: one loss
    loss_parts: tuple[str, str] | None = None
    labels: bool = False  # a model with a label embedding can be trained this way (batches carry `label`)


def _simbert_run(run_cfg: Any) -> str | None:
    """SimBERT pairs must stay together in every micro-batch (see `simbert.similarity_loss`)."""
    from t5pegasus.pretrain.groups import pairs_per_batch

    try:
        pairs_per_batch(run_cfg.data.batch_size, jax.process_count(), run_cfg.optim.accumulate)
    except UserError as e:
        return str(e)
    return None


KINDS: dict[str, ObjectiveKind] = {
    "seq2seq": ObjectiveKind(_seq2seq_args, {"encoder_ids": "source", "encoder_mask": "source",
                                             "decoder_ids": "target", "targets": "target", "weights": "target"},
                             ("seq2seq", "pegasus"), packed=SEQ2SEQ_PACKED),
    "lm": ObjectiveKind(_lm_args, {"ids": "length", "targets": "length", "weights": "length"}, ("lm",),
                        _lm_mask, packed=LM_PACKED, labels=True),
    "unilm": ObjectiveKind(_unilm_args, {"ids": "length", "segment_ids": "length", "targets": "length",
                                         "weights": "length"}, ("unilm",), _unilm_mask,
                           no_packing="its segment ids are the source/target split that builds the UniLM mask",
                           labels=True),
    "simbert": ObjectiveKind(_unilm_args, {"ids": "length", "segment_ids": "length", "targets": "length",
                                           "weights": "length", "pair_ids": "row"}, ("simbert",), _unilm_mask,
                             check_run=_simbert_run, output_loss=simbert.objective_loss,
                             loss_parts=("seq2seq_loss", "similarity_loss"),
                             no_packing="its rows are sentence pairs whose [CLS] vectors are compared in the batch"),
}


def packing_problem(kind: str, model_cfg: Any) -> str | None:
    """Why `data.pack` cannot train `model_cfg` with objective `kind` (None when it can)."""
    spec = KINDS[kind]
    if not spec.packed:
        return f"data.pack is not available for objective {kind!r}: {spec.no_packing}; set data.pack=false"
    if getattr(model_cfg, "mask", None) is not None:  # a BERT: its segment ids are token types
        return (f"data.pack is not available for a BERT with objective {kind!r}: its segment_ids are token types, "
                "so packed examples cannot be told apart; set data.pack=false")
    attention = model_cfg.attention.kind
    if attention != "softmax":
        return (f"data.pack needs attention.kind='softmax', not {attention!r}: that kernel takes no per-example "
                f"mask, so packed examples would attend to each other; set data.pack=false")
    return None


def check_objective(kind: str, model_cfg: Any) -> None:
    """Refuse an objective kind that is unknown or cannot train `model_cfg` (before any data is built)."""
    if kind not in KINDS:
        raise UserError(f"unknown objective {kind!r}; choose one of: {', '.join(KINDS)}")
    family = families.of(model_cfg)
    if kind not in family.objectives:
        trains = " or ".join(f.name for f in families.for_objective(kind)) or "no"
        raise UserError(f"objective {kind!r} trains a {trains} model, but the model config is a {family.name} "
                        f"(its objectives: {', '.join(family.objectives)})")
    problem = KINDS[kind].check(model_cfg)
    if problem:
        raise UserError(problem)
    if getattr(model_cfg, "num_conditions", 0) and not KINDS[kind].labels:
        takes = ", ".join(k for k, spec in KINDS.items() if spec.labels)
        raise UserError(f"objective {kind!r} does not feed condition labels; a model with a label embedding "
                        f"(num_conditions) trains with {takes}")


def make_objective(kind: str, model_cfg: Any, *, label_smoothing: float = 0.0, z_loss: float = 0.0,
                   packed: bool = False) -> Objective:
    """The objective `kind` over a model built from `model_cfg` (its family must be trained by the objective);
    `packed`: it reads packed batches (several examples per row, `data.pack`)."""
    check_objective(kind, model_cfg)
    spec = KINDS[kind]
    if packed and (problem := packing_problem(kind, model_cfg)):
        raise UserError(problem)
    fields = {**spec.fields, **spec.packed} if packed else dict(spec.fields)
    call_args = spec.call_args
    if getattr(model_cfg, "num_conditions", 0):
        fields[LABEL], call_args = "row", with_labels(call_args)
    model = families.of(model_cfg).model.load()(model_cfg)
    return Objective(kind, model, call_args, fields, label_smoothing, z_loss, spec.output_loss)


def batch_lengths(batch: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Tokens per example of a batch: source+target for seq2seq, sequence length otherwise."""
    if "encoder_ids" in batch:
        return {"source": batch["encoder_ids"].shape[1], "target": batch["decoder_ids"].shape[1]}
    return {"length": batch["ids"].shape[1]}


def to_model_batch(batch: Mapping[str, np.ndarray], obj: Objective) -> dict[str, np.ndarray]:
    """Keep the fields the objective reads (a loader batch can carry more)."""
    missing = [f for f in obj.fields if f not in batch]
    if LABEL in missing:
        raise UserError("the model has a label embedding (num_conditions) but the dataset's examples carry no "
                        "condition label: give every example a \"label\" field")
    if missing:
        raise UserError(f"the dataset's batches lack {', '.join(missing)} needed by objective {obj.name!r}; "
                        f"prepare the data with a matching --task ({'/'.join(KINDS[obj.name].data_tasks)})")
    return {f: np.asarray(batch[f], np.int32) for f in obj.fields}


