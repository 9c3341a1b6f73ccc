"""HF transformers model folders -> (config, params) for every family, by the family that reads its `model_type`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from t5pegasus import families
from t5pegasus.config import ConfigBase
from t5pegasus.convert.checkpoint_files import TensorSource, read_json, read_state_dict
from t5pegasus.errors import UserError

# Tensors HF keeps that carry no information of ours (buffers, duplicated tables).
IGNORED = ("EncDecAttention.relative_attention_bias", "attn.bias", "attn.masked_bias", "position_ids")


def load_hf(folder: str | os.PathLike, dtype: str | None = None) -> tuple[ConfigBase, dict[str, Any]]:
    """(config, params) from a HF transformers folder (config.json + safetensors or pytorch_model.bin).

    Params are a plain nested dict of arrays in our unscanned layout (stacked if the config scans layers),
    in the config's param dtype unless `dtype` is given.
    """
    folder = Path(folder)
    hf_config = read_json(folder / "config.json")
    model_type = hf_config.get("model_type")
    family = families.for_hf_model_type(model_type)
    if family is None:
        known = sorted(t for f in families.all_families() for t in f.hf_model_types)
        raise UserError(f"{folder}: model_type {model_type!r} is not supported; known: {', '.join(known)}")
    fmt = family.converter("hf")
    source = TensorSource(read_state_dict(folder), str(folder))
    cfg = fmt.config_from_hf(hf_config, source)
    params = fmt.params_from_hf(cfg, source)
    left = source.unused(IGNORED)
    if left:
        raise UserError(f"{folder}: {len(left)} tensor(s) were not used, e.g. {', '.join(left[:5])}; "
                        "is this the model type its config says?")
    cfg, params = _restore_exact(folder, hf_config, cfg, params, fmt)
    target = jnp.dtype(dtype or getattr(cfg, "param_dtype", "float32"))
    params = _to_arrays(params, target)
    if getattr(cfg, "scan_layers", False):
        from t5pegasus.models.layers import stack_layers

        params = stack_layers(params)
    return cfg, params


def _restore_exact(folder: Path, hf_config: dict, cfg: ConfigBase, params: dict, fmt: Any) -> tuple[ConfigBase, dict]:
    """Undo what an export to HF had to approximate, when the folder was written by `save_hf`: our config
    (with the switches HF has no field for) and the tensors the export kept beside the HF ones."""
    from t5pegasus.config import load_config_dict
    from t5pegasus.convert.hf_export import EXACT_SIDECAR, OUR_CONFIG_KEY

    ours = hf_config.get(OUR_CONFIG_KEY)
    if not isinstance(ours, dict) or ours.get("family") != cfg.family:
        return cfg, params
    exact_cfg = load_config_dict(ours, str(folder / "config.json"))
    sidecar = folder / EXACT_SIDECAR
    exact: dict = {}
    if sidecar.exists():
        from safetensors.numpy import load_file

        exact = load_file(str(sidecar))
    return exact_cfg, fmt.restore_exact(exact_cfg, params, exact)


def _to_arrays(tree: Any, dtype: jnp.dtype) -> Any:
    if isinstance(tree, dict):
        return {k: _to_arrays(v, dtype) for k, v in tree.items()}
    return jnp.asarray(np.ascontiguousarray(tree), dtype=dtype)
