"""Megatron-LM model-parallel GPT-2 shards (the CPM-LM release layout) <-> a GPT model, both ways.

A checkpoint is `<dir>/<iteration>/mp_rank_{r:02d}_model_states.pt` (with `<dir>/latest_checkpointed_iteration.txt`
naming the iteration), each a torch pickle whose `module` entry is rank r's slice of the state dict, in torch
[out, in] layout. How each tensor is split over ranks (and so merged back):

- `word_embeddings.weight`: rows (vocabulary) split; concatenate on rows.
- `attention.query_key_value`: each rank holds [q_r; k_r; v_r] for its heads, so the full Q is concat(q_0, q_1, ...)
  and likewise K and V. A plain concatenation of the ranks' rows would interleave Q, K and V: wrong.
- `attention.dense` and `mlp.dense_4h_to_h`: weight split on the input dimension (concatenate on columns); the
  bias is added once after the all-reduce, so every rank holds the same bias.
- `mlp.dense_h_to_4h`: weight and bias split on the output dimension (rows).
- position embeddings and every LayerNorm: duplicated on each rank (checked equal, one is kept).

The shards hold no tokenizer (`--tokenizer` gives it). A sentencepiece model given with Megatron GPT-2 shards is
CPM-LM's (`bpe_3w_new/chinese_vocab.model`), so its kind is `cpm` (jieba cut, U+2582 / U+2583 for space /
newline) unless `--tokenizer-kind` says otherwise; folders converted from them record that kind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from t5pegasus import fileio
from t5pegasus.convert import gpt2_names
from t5pegasus.convert.checkpoint_files import TensorSource
from t5pegasus.convert.name_map import from_foreign, to_foreign
from t5pegasus.errors import UserError
from t5pegasus.families import GPTConfig

SHARD_RE = re.compile(r"mp_rank_(\d+)_model_states\.pt$")
LATEST = "latest_checkpointed_iteration.txt"
SENTENCEPIECE_KIND = "cpm"  # the tokenizer kind of a .model beside Megatron shards (see the module doc)


def _kind(name: str) -> str:
    """How the tensor `name` is split over model-parallel ranks: rows, cols, qkv or same (duplicated)."""
    if name.endswith("word_embeddings.weight") and "position" not in name:
        return "rows"
    if ".attention.query_key_value." in name:
        return "qkv"
    if name.endswith(("attention.dense.weight", "mlp.dense_4h_to_h.weight")):
        return "cols"
    if ".mlp.dense_h_to_4h." in name:
        return "rows"
    return "same"


def merge_shards(shards: list[dict[str, np.ndarray]], where: str = "megatron") -> dict[str, np.ndarray]:
    """One full (model-parallel size 1) state dict from the ranks' state dicts, in rank order."""
    names = set(shards[0])
    for r, shard in enumerate(shards[1:], 1):
        if set(shard) != names:
            diff = sorted(names ^ set(shard))
            raise UserError(f"{where}: rank {r} has different tensors than rank 0, e.g. {', '.join(diff[:3])}")
    full: dict[str, np.ndarray] = {}
    for name in sorted(names):
        parts = [s[name] for s in shards]
        shapes = {p.shape for p in parts}
        if len(shapes) != 1:
            raise UserError(f"{where}: tensor {name!r} has different shapes over ranks: {sorted(shapes)}")
        kind = _kind(name)
        if kind == "rows":
            full[name] = np.concatenate(parts, axis=0)
        elif kind == "cols":
            full[name] = np.concatenate(parts, axis=1)
        elif kind == "qkv":
            if parts[0].shape[0] % 3:
                raise UserError(f"{where}: tensor {name!r} has {parts[0].shape[0]} rows, not a multiple of 3")
            thirds = [np.split(p, 3, axis=0) for p in parts]
            full[name] = np.concatenate([np.concatenate([t[j] for t in thirds], axis=0) for j in range(3)], axis=0)
        else:
            for r, p in enumerate(parts[1:], 1):
                if not np.array_equal(p, parts[0]):
                    raise UserError(f"{where}: tensor {name!r} should be the same on every rank but rank {r} "
                                    "differs from rank 0; are the shards from one checkpoint, in rank order?")
            full[name] = parts[0]
    return full


def split_state(full: dict[str, np.ndarray], ranks: int) -> list[dict[str, np.ndarray]]:
    """The inverse of `merge_shards`: rank r's state dict for `ranks`-way model parallelism."""
    out: list[dict[str, np.ndarray]] = [{} for _ in range(ranks)]
    for name, value in full.items():
        kind = _kind(name)
        if kind == "rows":
            pieces = _even_split(name, value, ranks, 0)
        elif kind == "cols":
            pieces = _even_split(name, value, ranks, 1)
        elif kind == "qkv":
            q, k, v = (_even_split(name, t, ranks, 0) for t in np.split(value, 3, axis=0))
            pieces = [np.concatenate([q[r], k[r], v[r]], axis=0) for r in range(ranks)]
        else:
            pieces = [value] * ranks
        for r in range(ranks):
            out[r][name] = np.ascontiguousarray(pieces[r])
    return out


def _even_split(name: str, value: np.ndarray, ranks: int, axis: int) -> list[np.ndarray]:
    if value.shape[axis] % ranks:
        raise UserError(f"tensor {name!r} of shape {value.shape} cannot be split {ranks} ways on axis {axis}")
    return np.split(value, ranks, axis=axis)


def config_from_megatron(full: dict[str, np.ndarray], num_heads: int | None = None, **overrides: Any) -> GPTConfig:
    """A GPTConfig whose sizes are read from the merged tensors. The head count is not in any shape: it comes
    from `num_heads`, or from the CPM-LM preset when the sizes are CPM-LM's."""
    source = TensorSource(full, "megatron")
    vocab, d = _shape(source, "word_embeddings.weight", 2)
    positions, _ = _shape(source, "position_embeddings.weight", 2)
    ff = _shape(source, "transformer.layers.0.mlp.dense_h_to_4h.weight", 2)[0]
    layers = 1 + max(int(m.group(1)) for k in full if (m := re.match(r"transformer\.layers\.(\d+)\.", k)))
    cpm = GPTConfig.preset("cpm-lm")
    if num_heads is None:
        if (d, layers, ff, positions) != (cpm.hidden_size, cpm.num_layers, cpm.intermediate_size,
                                          cpm.max_position_embeddings):
            raise UserError("the number of attention heads is not recorded in Megatron shards; give it "
                            f"(--num-heads) for this hidden size {d}")
        num_heads = cpm.num_heads
    if d % num_heads:
        raise UserError(f"hidden size {d} is not divisible by {num_heads} heads")
    values = dict(vocab_size=vocab, hidden_size=d, num_layers=layers, num_heads=num_heads, head_dim=d // num_heads,
                  intermediate_size=ff, max_position_embeddings=positions, hidden_act="gelu",
                  layer_norm_epsilon=1e-5, dropout_rate=0.0, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    values.update(overrides)
    return GPTConfig(**values)


def _shape(source: TensorSource, name: str, ndim: int) -> tuple[int, ...]:
    if not source.has(name):
        raise UserError(f"megatron: tensor {name!r} is missing; is this a Megatron GPT-2 checkpoint?")
    shape = source.tensors[name].shape
    if len(shape) != ndim:
        raise UserError(f"megatron: tensor {name!r} has shape {shape}, expected {ndim} dimensions")
    return shape


def params_from_megatron(cfg: GPTConfig, tensors: TensorSource) -> dict[str, Any]:
    """Our (unscanned) GPT parameter tree from a merged Megatron GPT-2 state dict (names: gpt2_names)."""
    return from_foreign(gpt2_names.entries(cfg, "megatron"), tensors)


def params_to_megatron(cfg: GPTConfig, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """A full (unsharded) Megatron GPT-2 state dict, torch [out, in] layout, from our unscanned params."""
    return to_foreign(gpt2_names.entries(cfg, "megatron"), params, "GPT params")


def shard_files(path: str | os.PathLike) -> list[Path]:
    """The rank files of a checkpoint, in rank order. `path` is the iteration folder, or the checkpoint folder
    (the iteration is read from latest_checkpointed_iteration.txt, else the highest numbered subfolder)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a folder (expected a Megatron checkpoint folder)")
    if not any(SHARD_RE.search(f.name) for f in path.iterdir()):
        if (path / LATEST).exists():
            name = (path / LATEST).read_text().strip()
            path = path / name if (path / name).is_dir() else path / f"iter_{int(name):07d}"
        else:
            numbered = sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
            if not numbered:
                raise UserError(f"{path} has no mp_rank_XX_model_states.pt files, no {LATEST} and no iteration folder")
            path = numbered[-1]
    files = sorted((f for f in path.iterdir() if SHARD_RE.search(f.name)), key=lambda f: int(SHARD_RE.search(
        f.name).group(1)))
    if not files:
        raise UserError(f"{path} has no mp_rank_XX_model_states.pt files")
    ranks = [int(SHARD_RE.search(f.name).group(1)) for f in files]
    if ranks != list(range(len(ranks))):
        raise UserError(f"{path}: model-parallel ranks {ranks} are not 0..{len(ranks) - 1}; a shard is missing")
    return files


def _read_shard(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise UserError("reading Megatron shards needs PyTorch: pip install 't5pegasus[torch]'") from None
    state = torch.load(str(file), map_location="cpu", weights_only=False)
    module = state.get("module", state.get("model")) if isinstance(state, dict) else None
    if not isinstance(module, dict):
        raise UserError(f"{file}: no 'module' state dict inside; is this a Megatron model_states file?")
    out = {}
    for key, value in module.items():
        if isinstance(value, torch.Tensor):
            out[key.removeprefix("module.").removeprefix("model.")] = value.detach().to(torch.float32).numpy()
    return out


def load_megatron(path: str | os.PathLike, num_heads: int | None = None, dtype: str | None = None,
                  **config_overrides: Any) -> tuple[GPTConfig, dict[str, Any]]:
    """(config, params) of a GPT from Megatron model-parallel shards (merged in memory)."""
    import jax.numpy as jnp

    files = shard_files(path)
    full = merge_shards([_read_shard(f) for f in files], str(files[0].parent))
    cfg = config_from_megatron(full, num_heads, **config_overrides)
    source = TensorSource(full, str(files[0].parent))
    params = params_from_megatron(cfg, source)
    left = source.unused()
    if left:
        raise UserError(f"{files[0].parent}: {len(left)} tensor(s) were not used, e.g. {', '.join(left[:5])}; "
                        "is this a Megatron GPT-2 checkpoint?")
    target = jnp.dtype(dtype or cfg.param_dtype)
    to_array: Callable[[Any], Any] = lambda t: ({k: to_array(v) for k, v in t.items()} if isinstance(t, dict)
                                               else jnp.asarray(t, target))
    params = to_array(params)
    if cfg.scan_layers:
        from t5pegasus.models.layers import stack_layers

        params = stack_layers(params)
    return cfg, params


def save_megatron(cfg: GPTConfig, params: Any, folder: str | os.PathLike, ranks: int = 1, iteration: int = 0,
                  overwrite: bool = False, dtype: str = "float32") -> Path:
    """Write `<folder>/<iteration>/mp_rank_XX_model_states.pt` for `ranks`-way model parallelism (atomically)."""
    import torch

    from t5pegasus.models import unbox
    from t5pegasus.models.layers import unstack_layers

    if not isinstance(cfg, GPTConfig):
        raise UserError(f"Megatron export is for GPT models; this is a {cfg.family!r} model")
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise UserError(f"{folder} exists; choose another destination or allow overwriting (--force)")
    full = params_to_megatron(cfg, unstack_layers(unbox(params)))
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    with fileio.atomic_dir(folder, overwrite=overwrite) as tmp:
        (tmp / str(iteration)).mkdir()
        for r, shard in enumerate(split_state(full, ranks)):
            module = {k: torch.from_numpy(v).to(torch_dtype) for k, v in shard.items()}
            name = f"mp_rank_{r:02d}_model_states.pt"
            torch.save({"iteration": iteration, "module": module}, tmp / str(iteration) / name)
        (tmp / LATEST).write_text(f"{iteration}\n")
    return folder
