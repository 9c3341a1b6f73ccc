"""The model families: one record per family, registered beside its config, looked up here and nowhere else.

A `Family` says everything the rest of the house needs to know about a kind of model: its config class, its
flax module, the objectives that train it, the decoding adapter that generates with it, its converters (HF,
TF, Megatron) and which tokenizer ids fill which config fields. Parts that live in higher layers (models,
decoding, convert) are named by `Ref`s and imported only when used, so this package imports no JAX and a run
config's model section is validated in milliseconds.

    from t5pegasus import families
    family = families.of(cfg)              # or families.get("t5")
    model = family.model.load()(cfg)       # the flax module

Adding a family: one module here (its config class and `register(Family(...))`, imported at the bottom of
this file), its flax module in `t5pegasus/models/`, and its converters in `t5pegasus/convert/`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from t5pegasus.config import ConfigBase, close_matches
from t5pegasus.errors import UserError


@dataclasses.dataclass(frozen=True)
class Ref:
    """A lazily imported object: "package.module:attribute", or "package.module" for the module itself."""

    path: str

    def load(self) -> Any:
        module, _, attribute = self.path.partition(":")
        loaded = importlib.import_module(module)
        return getattr(loaded, attribute) if attribute else loaded


@dataclasses.dataclass(frozen=True)
class Family:
    """What a model family is (see the module docstring).

    `objectives` lists the `objective.kind`s that train it, the default first. `token_ids` maps a config field
    to the tokenizer's special-id roles that fill it (`pad`, `unk`, `bos`, `eos`, `mask`, `decoder_start`; the
    first that the tokenizer has wins). `hf_model_types` are the HF `model_type`s its HF converter reads.
    `run_config` is the packaged run preset (`t5pegasus/configs/<name>.yaml`) a run of this family starts from
    when only `model.family` says it: its model preset, objective and data task.
    `model_kinds` names the models one set of weights can be (BERT: plain, UniLM, SimBERT): config fields that
    no checkpoint records, which a user states once (`--model-kind`) and which a fine-tuning objective of the
    same name turns on.
    """

    name: str
    config: type[ConfigBase]
    model: Ref
    objectives: tuple[str, ...]
    decoding: Ref
    token_ids: Mapping[str, tuple[str, ...]]
    hf: Ref | None = None
    hf_model_types: tuple[str, ...] = ()
    tf: Ref | None = None
    megatron: Ref | None = None
    model_kinds: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    run_config: str | None = None

    @property
    def default_objective(self) -> str:
        return self.objectives[0]

    def special_ids(self, roles: Mapping[str, int | None]) -> dict[str, int]:
        """Config field -> id, from a tokenizer's special ids by role (roles it lacks are left out)."""
        out = {}
        for field, wanted in self.token_ids.items():
            found = next((roles[r] for r in wanted if roles.get(r) is not None), None)
            if found is not None:
                out[field] = int(found)
        return out

    def model_kind(self, kind: str) -> dict[str, Any]:
        """The config fields that make a model of this family a `kind` (a UserError naming the kinds)."""
        if kind not in self.model_kinds:
            known = ", ".join(self.model_kinds) or "none"
            raise UserError(f"model kind {kind!r} is not one of the {self.name} family's: {known}")
        return dict(self.model_kinds[kind])

    def converter_ref(self, fmt: str) -> Ref | None:
        """Where the family's converter for `fmt` ("hf", "tf", "megatron") lives (None: it has none)."""
        return {"hf": self.hf, "tf": self.tf, "megatron": self.megatron}[fmt]

    def converter(self, fmt: str) -> Any:
        """The family's converter module or format record for `fmt` ("hf", "tf", "megatron")."""
        ref = self.converter_ref(fmt)
        if ref is None:
            known = [f.name for f in all_families() if f.converter_ref(fmt) is not None]
            raise UserError(f"no {fmt} checkpoint format for the {self.name!r} family; {fmt} holds: "
                            f"{', '.join(known) or 'none'}")
        return ref.load()


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family to the registry (once per name); returns it."""
    if family.name in _REGISTRY and _REGISTRY[family.name] != family:
        raise ValueError(f"a model family named {family.name!r} is registered already")
    if family.config.family != family.name:
        raise ValueError(f"{family.config.__name__}.family is {family.config.family!r}, not {family.name!r}")
    _REGISTRY[family.name] = family
    return family


def names() -> list[str]:
    return sorted(_REGISTRY)


def all_families() -> list[Family]:
    return [_REGISTRY[n] for n in names()]


def get(name: str | None, where: str = "model.family") -> Family:
    """The family called `name`; a UserError naming the known ones otherwise."""
    if name not in _REGISTRY:
        raise UserError(f"{where} {name!r} is not a model family{close_matches(str(name), names())}; "
                        f"choose one of: {', '.join(names())}")
    return _REGISTRY[name]


def of(cfg: ConfigBase) -> Family:
    """The family of a model config."""
    return get(cfg.family, f"{type(cfg).__name__}.family")


def for_objective(kind: str) -> list[Family]:
    """The families an objective kind trains."""
    return [f for f in all_families() if kind in f.objectives]


def objective_kinds() -> list[str]:
    """Every objective kind some family is trained with."""
    return sorted({k for f in all_families() for k in f.objectives})


def for_hf_model_type(model_type: str | None) -> Family | None:
    """The family whose HF converter reads `model_type` (None if none does)."""
    return next((f for f in all_families() if model_type in f.hf_model_types), None)


# The built-in families register themselves on import.
from t5pegasus.families.bert import BertConfig  # noqa: E402
from t5pegasus.families.gpt import GPTConfig  # noqa: E402
from t5pegasus.families.t5 import T5Config  # noqa: E402

__all__ = ["BertConfig", "Family", "GPTConfig", "Ref", "T5Config", "all_families", "for_hf_model_type",
           "for_objective", "get", "names", "objective_kinds", "of", "register"]
