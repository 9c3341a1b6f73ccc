"""(config, params) <-> a TF checkpoint folder in the original releases' names, for every family.

T5 in mesh-TensorFlow names (t5_tf), BERT in Google's (bert_tf), GPT-2 in OpenAI's (gpt2_tf; bert4keras' GPT-2 /
CPM-LM layout is read too). A folder holds
`checkpoint`, `model.ckpt.index`, `model.ckpt.data-00000-of-00001`, our exact config `t5pegasus_config.json`
and the family's own config file (`bert_config.json`, `hparams.json`, the T5 PEGASUS `config.json`). Import
reads our config when present, else the family's file (see each family module for what that assumes).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from t5pegasus import families, fileio
from t5pegasus.config import ConfigBase, load_config
from t5pegasus.convert.checkpoint_files import TensorSource
from t5pegasus.convert.detect import record_tokenizer
from t5pegasus.convert.name_map import Entry, from_foreign, names, to_foreign
from t5pegasus.convert.tf_checkpoint import read_checkpoint, write_checkpoint
from t5pegasus.errors import UserError

OUR_CONFIG = "t5pegasus_config.json"


def _formats() -> dict[str, Any]:
    """Family name -> its TFFormat (the layout export writes), for every family with a TF layout."""
    return {f.name: f.converter("tf") for f in families.all_families() if f.tf is not None}


def _layouts() -> list[tuple[str, Any]]:
    """(family name, TFFormat) of every layout import reads: each family's own, then its `also_reads`."""
    return [(name, layout) for name, fmt in _formats().items() for layout in (fmt, *fmt.also_reads)]


def tf_entries(cfg: ConfigBase, t5_norm: str | None = None) -> list[Entry]:
    """The name map of `cfg` (`t5_norm`: "rms_norm" or "layer_norm" spelling of T5 norms)."""
    return families.of(cfg).converter("tf").entries(cfg, t5_norm)


def tf_names(cfg: ConfigBase, t5_norm: str | None = None) -> dict[str, tuple[int, ...]]:
    """{TF name: shape} that `save_tf` writes for `cfg`."""
    return names(tf_entries(cfg, t5_norm))


def detect_layout(tensors: dict[str, np.ndarray]) -> tuple[str, Any] | None:
    """(family name, TFFormat) of the layout whose root tensor the checkpoint holds (None if none does)."""
    return next(((name, fmt) for name, fmt in _layouts() if fmt.root in tensors), None)


def detect_family(tensors: dict[str, np.ndarray]) -> str | None:
    """The family whose root tensor the checkpoint holds (None if none does)."""
    found = detect_layout(tensors)
    return found[0] if found else None


def _roots() -> str:
    return ", ".join(repr(fmt.root) for _, fmt in _layouts())


def _check_family(cfg: ConfigBase, found: tuple[str, Any] | None, tensors: dict[str, np.ndarray],
                  where: str) -> None:
    if found is not None and found[0] == cfg.family:
        return
    root = tf_entries(cfg)[0]
    held = (f"{found[1].label} tensors such as {found[1].root!r}" if found
            else f"none of {_roots()} (e.g. {', '.join(repr(n) for n in sorted(tensors)[:3]) or 'no tensors'})")
    raise UserError(f"{where}: a {_formats()[cfg.family].label} model needs tensor {root.name!r} of shape "
                    f"{root.shape}, but the checkpoint holds {held}")


def load_tf(path: str | os.PathLike, dtype: str | None = None) -> tuple[ConfigBase, dict[str, Any]]:
    """(config, params) from a TF checkpoint folder or prefix, in whichever layout of its family it is written
    (detected by root tensor); params are a plain dict of arrays in our unscanned layout (stacked if the config
    scans layers), in the config's param dtype unless `dtype` is given. Every tensor must be used: a left-over
    one (other than optimizer state) is an error."""
    import jax.numpy as jnp

    prefix, tensors = read_checkpoint(path)
    folder, where = prefix.parent, str(prefix)
    found = detect_layout(tensors)
    if (folder / OUR_CONFIG).is_file():
        cfg = load_config(folder / OUR_CONFIG)
        _check_family(cfg, found, tensors, where)
    elif found is None:
        labels = ", ".join(fmt.label for _, fmt in _layouts())
        raise UserError(f"{where}: not a checkpoint of a known layout ({labels}): it holds none of {_roots()}")
    else:
        cfg = found[1].config_from_native(folder, TensorSource(tensors, where))
    assert found is not None
    source = TensorSource(tensors, where)
    params = from_foreign(found[1].entries(cfg, None), source)
    left = source.unused()
    if left:
        raise UserError(f"{where}: {len(left)} tensor(s) were not used, e.g. {', '.join(left[:5])}; "
                        "does the config match the checkpoint?")
    target = jnp.dtype(dtype or getattr(cfg, "param_dtype", "float32"))
    params = _to_arrays(params, target)
    if getattr(cfg, "scan_layers", False):
        from t5pegasus.models.layers import stack_layers

        params = stack_layers(params)
    return cfg, params


def _to_arrays(tree: Any, dtype: Any) -> Any:
    import jax.numpy as jnp

    if isinstance(tree, dict):
        return {k: _to_arrays(v, dtype) for k, v in tree.items()}
    return jnp.asarray(np.ascontiguousarray(tree), dtype=dtype)


def save_tf(cfg: ConfigBase, params: Any, folder: str | os.PathLike, *, overwrite: bool = False,
            dtype: str = "float32", t5_norm: str | None = None,
            extra_files: dict[str, str | os.PathLike] | None = None, tokenizer_kind: str | None = None) -> Path:
    """Write `folder` as a TF checkpoint in the original names of `cfg`'s family, atomically.

    `t5_norm` picks the T5 norm spelling ("rms_norm": T5 1.1 / mT5 / T5 PEGASUS, "layer_norm": T5 1.0;
    default: by the feed-forward kind). `extra_files` maps names in the folder to files copied there
    (vocab.txt, spiece.model), whose kind `tokenizer_kind` is recorded beside them. An existing folder is
    replaced only with `overwrite`.
    """
    from t5pegasus.models import unbox
    from t5pegasus.models.layers import unstack_layers

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise UserError(f"{folder} exists; choose another destination or allow overwriting (--force)")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"dtype {dtype!r} is not one of float32, bfloat16, float16")
    fmt = families.of(cfg).converter("tf")
    fmt.check_exportable(cfg)
    tensors = to_foreign(tf_entries(cfg, t5_norm), unstack_layers(unbox(params)), f"{cfg.family} params")
    with fileio.atomic_dir(folder, overwrite=overwrite) as tmp:
        write_checkpoint(tmp, tensors, dtype)
        (tmp / OUR_CONFIG).write_text(cfg.to_json(), encoding="utf-8")
        for name, values in fmt.native_config(cfg).items():
            (tmp / name).write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for name, source in (extra_files or {}).items():
            if not Path(source).is_file():
                raise UserError(f"{source} (to be saved as {name}) is not a file")
            shutil.copyfile(source, tmp / name)
        record_tokenizer(tmp, {k: Path(v) for k, v in (extra_files or {}).items()}, tokenizer_kind)
    return folder
