"""Model configurations: the shared machinery, the attention config every family nests, the BERT/GPT stack.

A config is a frozen dataclass and the whole architectural description of a model: two models built from
equal configs have the same parameter tree. `ConfigBase` gives every family presets, validated replacement
and JSON round trips; `AttentionConfig` is the one set of attention switches, nested as `cfg.attention` in
T5, BERT and GPT configs alike; `StackConfig` holds the fields BERT and GPT share. The family configs
themselves (`T5Config`, `BertConfig`, `GPTConfig`) live with their family records in `t5pegasus.families`.

This module imports no JAX, so validating a run config's `model.*` keys takes milliseconds.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any, ClassVar, TypeVar

from t5pegasus import fileio
from t5pegasus.errors import UserError

C = TypeVar("C", bound="ConfigBase")

DTYPES = ("float32", "bfloat16", "float16")
_CLASSES: dict[str, type[ConfigBase]] = {}  # family name -> config class (filled by subclassing ConfigBase)

# Attention switches (docs/attention.md has the table of what combines with what, and why).
ATTENTION_KINDS = ("softmax", "linear", "performer", "nystrom")
POSITION_KINDS = ("learned", "rope", "rerope", "leaky_rerope", "hierarchical", "none")
ROPE_LAYOUTS = ("interleaved", "half")
SOFTMAX_BACKENDS = ("einsum", "xla", "cudnn", "flash", "splash")  # t5pegasus.attention.kernels implements them
ATTENTION_BACKENDS = ("auto", *SOFTMAX_BACKENDS)
ROTARY_KINDS = ("rope", "rerope", "leaky_rerope")
RELATIVE_KINDS = ("rerope", "leaky_rerope")
_SCORE_BACKENDS = ("auto", "einsum")  # what a path that builds its own score matrix runs on
# The switches that change what a model computes (the backend and the rope/rerope parameters only matter
# once one of these is switched on).
ATTENTION_SWITCHES = ("kind", "position", "realformer")
# Flat field names of configs saved before the attention switches were nested (old name -> new name).
FLAT_ATTENTION_FIELDS = {
    "attention_kind": "kind", "position_kind": "position", "attention_backend": "backend",
    "realformer": "realformer", "rope_layout": "rope_layout", "rope_base": "rope_base",
    "rerope_window": "rerope_window", "rerope_leaky": "rerope_leaky", "hierarchical_alpha": "hierarchical_alpha",
    "performer_features": "performer_features", "performer_redraw": "performer_redraw",
    "nystrom_landmarks": "nystrom_landmarks", "nystrom_pinv_iterations": "nystrom_pinv_iterations",
}  # fmt: skip


def close_matches(name: str, choices: list[str]) -> str:
    """" (did you mean a, b?)" for a misspelt name, or "" when nothing is close."""
    near = difflib.get_close_matches(name, choices, n=3)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def _unknown_fields(cls: type, values: dict[str, Any], where: str) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(f"unknown {where} field(s): " + ", ".join(f"{u!r}{close_matches(u, names)}" for u in unknown)
                        + f"; the fields are: {', '.join(names)}")


def _as_dict(attention: AttentionConfig | dict[str, Any] | None) -> dict[str, Any]:
    """An attention section as a plain dict, whichever form it was given in."""
    return dataclasses.asdict(attention) if isinstance(attention, AttentionConfig) else dict(attention or {})


def _default_attention(cls: type) -> AttentionConfig:
    """A family config class's default attention (T5's differs from BERT/GPT's in its positions)."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == "attention")


def _one_of(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"invalid {owner}: {name} {value!r} is not one of {', '.join(choices)}")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """How every attention layer of a model computes: kernel kind, positions, RealFormer, softmax backend.

    kind: softmax | linear | performer | nystrom. position: learned | rope | rerope | leaky_rerope |
    hierarchical | none for BERT/GPT, relative_bias | rope for T5 (rotary kinds rotate self-attention only).
    backend: the fused softmax kernel ("auto" = the fastest that can take a call). The other fields
    parameterise one kind each. Which combinations a family accepts is checked by `check`.
    """

    kind: str = "softmax"
    position: str = "learned"
    backend: str = "auto"
    realformer: bool = False
    rope_layout: str = "interleaved"
    rope_base: float = 10000.0
    rerope_window: int = 512
    rerope_leaky: float = 16.0
    hierarchical_alpha: float = 0.4
    performer_features: int = 128
    performer_redraw: bool = True
    nystrom_landmarks: int = 64
    nystrom_pinv_iterations: int = 6

    @classmethod
    def from_dict(cls, values: dict[str, Any] | AttentionConfig) -> AttentionConfig:
        if isinstance(values, AttentionConfig):
            return values
        if not isinstance(values, dict):
            raise UserError(f"the attention config must be a mapping of fields to values, not {values!r}")
        _unknown_fields(cls, values, "attention")
        return cls(**values)

    @property
    def rotary(self) -> str:
        """The rotary kind applied to self-attention's q and k: rope | rerope | leaky_rerope | none."""
        return self.position if self.position in ROTARY_KINDS else "none"

    @property
    def rerope(self) -> bool:
        return self.position in RELATIVE_KINDS

    @property
    def leak(self) -> float | None:
        """Leaky ReRoPE's divisor beyond the window (None for plain ReRoPE and every other kind)."""
        return self.rerope_leaky if self.position == "leaky_rerope" else None

    def check(self, owner: str, *, kinds: tuple[str, ...], positions: tuple[str, ...], head_dim: int,
              causal: bool, unilm: bool) -> None:
        """Refuse values and combinations the family `owner` (e.g. "BertConfig") cannot run (see
        docs/attention.md): `kinds` / `positions` are what it implements; `causal` / `unilm` describe its mask."""

        def need(condition: bool, message: str) -> None:
            if not condition:
                raise UserError(f"invalid {owner}: {message}")

        for name, choices in (("kind", kinds), ("position", positions), ("backend", ATTENTION_BACKENDS),
                              ("rope_layout", ROPE_LAYOUTS)):
            _one_of(owner, f"attention.{name}", getattr(self, name), choices)
        kind, position = self.kind, self.position
        if position in ROTARY_KINDS:
            need(head_dim % 2 == 0, f"attention.position={position!r} rotates pairs of head dims; the head dim "
                 f"{head_dim} must be even")
            need(self.rope_base > 0, "attention.rope_base must be positive")
        if position in RELATIVE_KINDS:
            need(self.rerope_window > 0, "attention.rerope_window must be positive")
        if position == "leaky_rerope":
            need(self.rerope_leaky > 1, "attention.rerope_leaky must be > 1 (distances beyond the window are "
                 "divided by it)")
        if kind != "softmax":
            need(position not in RELATIVE_KINDS, f"attention.position={position!r} needs attention.kind='softmax': "
                 f"ReRoPE picks between score matrices per (query, key), and {kind} attention never forms one")
            need(not self.realformer, f"attention.realformer needs attention.kind='softmax': {kind} attention has "
                 "no score matrix to carry to the next layer")
        if kind == "nystrom":
            # linear and performer apply the UniLM mask exactly (source keys bidirectional + a causal scan over
            # the target keys); Nystromformer's landmarks mix every position, so it has neither form.
            need(not unilm, "mask='unilm' needs attention.kind='softmax', 'linear' or 'performer': the UniLM "
                 "seq2seq mask hides later target tokens, and nystrom's landmarks average over the whole sequence "
                 "(it has no causal form either)")
            need(not causal, "attention.kind='nystrom' has no causal form (its landmarks average over future "
                 "positions); use it with a bidirectional BERT, or pick linear or performer")
        if kind != "softmax" or self.realformer or position in RELATIVE_KINDS:
            path = (f"attention.kind={kind!r}" if kind != "softmax" else
                    "realformer / ReRoPE (explicit score matrices)")
            need(self.backend in _SCORE_BACKENDS, f"attention.backend={self.backend!r} has no effect with {path}, "
                 "which does not run the fused softmax kernels; leave it 'auto'")
        for name in ("performer_features", "nystrom_landmarks", "nystrom_pinv_iterations"):
            need(getattr(self, name) > 0, f"attention.{name} must be positive")
        need(0.0 <= self.hierarchical_alpha < 1.0, "attention.hierarchical_alpha must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class ConfigBase:
    """Presets, validated replacement and JSON round trips shared by every family's config.

    Values may be given nested (`attention={"kind": "linear"}`) or, as configs were saved before the switches
    were nested, flat (`attention_kind="linear"`); `upgrade` turns the second form into the first.
    """

    family: ClassVar[str] = ""
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.family:
            _CLASSES[cls.family] = cls

    @classmethod
    def presets(cls) -> list[str]:
        """Names accepted by `preset`."""
        return sorted(cls.PRESETS)

    @classmethod
    def preset(cls: type[C], name: str, **overrides: Any) -> C:
        """The named preset, with `overrides` applied. Unknown names are a UserError listing the choices."""
        if name not in cls.PRESETS:
            raise UserError(
                f"unknown {cls.__name__} preset {name!r}{close_matches(name, cls.presets())}; "
                f"choose one of: {', '.join(cls.presets())}"
            )
        return cls.from_dict(cls.merge(cls.PRESETS[name], overrides))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def upgrade(cls, values: dict[str, Any]) -> dict[str, Any]:
        """`values` in today's form: flat attention fields of older files move into the nested `attention`."""
        values = {k: v for k, v in values.items() if k != "family"}
        flat = [k for k in values if k in FLAT_ATTENTION_FIELDS]
        if flat:
            nested = _as_dict(values.get("attention"))
            for key in flat:
                nested[FLAT_ATTENTION_FIELDS[key]] = values.pop(key)
            values["attention"] = nested
        return values

    @classmethod
    def merge(cls, base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        """`base` with `changes` applied, both in either form; nested attention fields merge field by field."""
        out, changes = cls.upgrade(base), cls.upgrade(changes)
        if isinstance(changes.get("attention"), dict) and "attention" in out:
            changes = {**changes, "attention": {**_as_dict(out["attention"]), **changes["attention"]}}
        return {**out, **changes}

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """Build from a dict; a key that is not a field is a UserError naming the fields that exist."""
        values = cls.upgrade(values)
        _unknown_fields(cls, values, cls.__name__)
        given = values.get("attention")
        if isinstance(given, dict):  # fields not given keep this family's defaults (T5: relative_bias positions)
            values["attention"] = AttentionConfig.from_dict({**_as_dict(_default_attention(cls)), **given})
        elif given is not None:
            values["attention"] = AttentionConfig.from_dict(given)
        return cls(**values)

    def replace(self: C, **changes: Any) -> C:
        """A copy with `changes` applied (validated like `from_dict`)."""
        return type(self).from_dict(self.merge(self.to_dict(), changes))

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as JSON, atomically."""
        fileio.write_text(path, self.to_json())

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        """Read a config written by `save` (the family must match this class)."""
        config = load_config(path)
        if not isinstance(config, cls):
            raise UserError(f"{path} holds a {type(config).__name__}, not a {cls.__name__}")
        return config

    @property
    def position_limit(self) -> int | None:
        """The most positions a sequence may have (an absolute position table's rows, or their hierarchical
        extension), None when unbounded. Fine-tuning and generation cap lengths at it."""
        return None

    @property
    def trained_positions(self) -> int | None:
        """The positions the model was trained on (the table's rows), None when unbounded: what default lengths
        fit; longer inputs, up to `position_limit`, must be asked for."""
        return self.position_limit

    def _check(self, condition: bool, message: str) -> None:
        if not condition:
            raise UserError(f"invalid {type(self).__name__}: {message}")

    def _check_common(self, sizes: tuple[str, ...]) -> None:
        """The checks every family shares: dtypes, positive sizes, the dropout range."""
        self._check(self.dtype in DTYPES and self.param_dtype in DTYPES,  # type: ignore[attr-defined]
                    f"dtype and param_dtype must be one of {', '.join(DTYPES)}")
        for name in sizes:
            self._check(getattr(self, name) > 0, f"{name} must be positive")
        self._check(0.0 <= self.dropout_rate < 1.0, "dropout_rate must be in [0, 1)")  # type: ignore[attr-defined]


def nondefault_attention_switches(cfg: ConfigBase) -> dict[str, Any]:
    """The attention switches of `cfg` that differ from its family's defaults, e.g. {"position": "rope"}; empty
    for a standard model. HF / TF / Megatron checkpoints cannot express them, so an export refuses them."""
    default = _default_attention(type(cfg))
    ours = cfg.attention  # type: ignore[attr-defined]
    return {name: getattr(ours, name) for name in ATTENTION_SWITCHES if getattr(ours, name) != getattr(default, name)}


def load_config(path: str | os.PathLike) -> ConfigBase:
    """Read any family's config JSON (the `family` key picks the class)."""
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid JSON: {e}") from None
    return load_config_dict(values, str(path))


def config_class(family: str | None, where: str = "config") -> type[ConfigBase]:
    """The config class of a family name (a UserError naming the known families otherwise)."""
    import t5pegasus.families  # noqa: F401  (registers the built-in families)

    if family not in _CLASSES:
        raise UserError(f"{where} names family {family!r}{close_matches(str(family), sorted(_CLASSES))}; "
                        f"known: {', '.join(sorted(_CLASSES))}")
    return _CLASSES[family]


def load_config_dict(values: dict[str, Any], where: str = "config") -> ConfigBase:
    """Any family's config from a dict with a `family` key."""
    return config_class(values.get("family"), where).from_dict(values)


ACTIVATION_NAMES = ("gelu", "gelu-erf", "relu", "silu")


@dataclasses.dataclass(frozen=True)
class StackConfig(ConfigBase):
    """The fields BERT and GPT share: a stack of same-width layers over token + learned position embeddings."""

    vocab_size: int = 0  # each family sets its own
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    head_dim: int = 64  # per head; hidden_size need not equal num_heads * head_dim (HF BERT/GPT-2 needs it)
    intermediate_size: int = 3072  # the feed-forward width
    max_position_embeddings: int = 512  # rows of the learned position table (trained_positions)
    hidden_act: str = "gelu-erf"  # one of ACTIVATION_NAMES
    layer_norm_epsilon: float = 1e-12
    dropout_rate: float = 0.1  # embeddings, attention output and feed-forward alike
    initializer_range: float = 0.02  # stddev of every weight's normal init
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat: bool = False
    pad_token_id: int = 0
    attention: AttentionConfig = AttentionConfig()

    @property
    def position_limit(self) -> int | None:
        """The table's rows; with hierarchical positions their extension, n * n (docs/attention.md); None for
        rotary or no positions, which have no table."""
        n = self.max_position_embeddings
        return {"learned": n, "hierarchical": n * n}.get(self.attention.position)

    @property
    def trained_positions(self) -> int | None:
        return self.max_position_embeddings

    def _check_stack(self, *, causal: bool, unilm: bool) -> None:
        self._check(self.hidden_act in ACTIVATION_NAMES,
                    f"hidden_act {self.hidden_act!r} is not one of {', '.join(ACTIVATION_NAMES)}")
        self._check_common(("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim", "intermediate_size",
                            "max_position_embeddings"))
        self.attention.check(type(self).__name__, kinds=ATTENTION_KINDS, positions=POSITION_KINDS,
                             head_dim=self.head_dim, causal=causal, unilm=unilm)
