"""Raw TF checkpoints: named tensors in and out of `<prefix>.index` + `<prefix>.data-*`, exact names kept.

TensorFlow is imported only here and only when a checkpoint is read or written (the optional `tf` extra).
Writing uses the SaveV2 op on plain tensors, so the names in the file are exactly the ones given (no
object-graph `/.ATTRIBUTES/VARIABLE_VALUE` suffixes), as TF1 `Saver`, mesh-TensorFlow, Google BERT and OpenAI
GPT-2 wrote them. Reading drops training state (global step, optimizer slots) and returns float32 arrays.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from t5pegasus.errors import UserError, unreadable

PREFIX = "model.ckpt"
# Name parts of training state that a model checkpoint may carry beside its weights (TF1 Adam slots,
# BERT's AdamWeightDecayOptimizer, mesh-TF Adafactor `_slot_` factors, the step counter).
_TRAINING_STATE = re.compile(r"(^|/)(global_step|adam_[mv]|Adam(_\d+)?|AdamWeightDecayOptimizer(_\d+)?|"
                             r"beta[12]_power|Momentum)(/|$)|_slot_")


def import_tf() -> Any:
    """The tensorflow module, or a UserError saying how to install it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF only moves tensors here; its oneDNN notice is noise
    try:
        with _native_stderr_silenced():
            import tensorflow as tf
    except ImportError:
        raise UserError('TF checkpoints need TensorFlow: pip install "t5pegasus[tf]"') from None
    return tf


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null while TensorFlow loads: its C++ libraries log INFO lines (oneDNN,
    "Could not find cuda drivers") before absl is initialised, where TF_CPP_MIN_LOG_LEVEL cannot reach them, and
    a command's output should be its own. Python exceptions raised meanwhile still surface afterwards."""
    if "tensorflow" in sys.modules:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def is_tf_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a TF checkpoint folder (a `checkpoint` state file or `*.index` files) or prefix."""
    path = Path(path)
    if path.is_dir():
        return (path / "checkpoint").is_file() or any(path.glob("*.index"))
    return path.with_name(path.name + ".index").is_file()


def _step(prefix: Path) -> int:
    match = re.search(r"-(\d+)$", prefix.name)
    return int(match.group(1)) if match else -1


def find_prefix(path: str | os.PathLike) -> Path:
    """The checkpoint prefix of a folder (its `checkpoint` file's latest entry, else its one `*.index`, else the
    highest `-<step>`), or of a prefix given directly."""
    path = Path(path)
    if not path.is_dir():
        if path.with_name(path.name + ".index").is_file():
            return path
        raise UserError(f"{path} is neither a folder nor a TF checkpoint prefix (no {path.name}.index)")
    state = path / "checkpoint"
    if state.is_file():
        match = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text(encoding="utf-8"), re.M)
        if match:
            named = Path(match.group(1))
            named = named if named.is_absolute() else path / named
            if named.with_name(named.name + ".index").is_file():
                return named
            local = path / named.name  # a folder moved after writing: its state file still names the old path
            if local.with_name(local.name + ".index").is_file():
                return local
    prefixes = sorted((p.with_suffix("") for p in path.glob("*.index")), key=lambda p: (_step(p), p.name))
    if not prefixes:
        raise UserError(f"{path} holds no TF checkpoint (no *.index file)")
    if len(prefixes) > 1 and _step(prefixes[-1]) == _step(prefixes[-2]):
        names = ", ".join(p.name for p in prefixes)
        raise UserError(f"{path} holds several checkpoints ({names}); give the prefix, e.g. {prefixes[-1]}")
    return prefixes[-1]


def is_training_state(name: str) -> bool:
    """Whether a checkpoint entry is optimizer or step state rather than a model weight."""
    return bool(_TRAINING_STATE.search(name))


def read_checkpoint(path: str | os.PathLike) -> tuple[Path, dict[str, np.ndarray]]:
    """(prefix, {name: float32 array}) of a TF checkpoint, without training state."""
    tf = import_tf()
    prefix = find_prefix(path)
    try:
        reader = tf.train.load_checkpoint(str(prefix))
    except (tf.errors.OpError, ValueError) as e:
        raise unreadable(f"{prefix}.index", e, "TF checkpoint") from None
    out = {}
    for name, dtype in sorted(reader.get_variable_to_dtype_map().items()):
        if is_training_state(name) or not (dtype.is_floating or dtype == tf.bfloat16):
            continue
        try:
            out[name] = np.asarray(reader.get_tensor(name)).astype(np.float32)
        except (tf.errors.OpError, IndexError, ValueError) as e:  # a data file cut short: "Read less bytes"
            data = sorted(prefix.parent.glob(prefix.name + ".data-*"))
            raise unreadable(data[0] if data else prefix, e, f"TF checkpoint (tensor {name!r})") from None
    return prefix, out


def write_checkpoint(folder: str | os.PathLike, tensors: dict[str, np.ndarray], dtype: str = "float32") -> Path:
    """Write `tensors` under their exact names as `<folder>/model.ckpt.{index,data-00000-of-00001}` plus the
    `checkpoint` state file (with a relative path, so the folder may be moved). `folder` must exist."""
    tf = import_tf()
    folder = Path(folder)
    names = sorted(tensors)
    target = {"float32": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}[dtype]
    values = [tf.cast(tf.constant(np.ascontiguousarray(tensors[n], dtype=np.float32)), target) for n in names]
    tf.raw_ops.SaveV2(prefix=str(folder / PREFIX), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=values)
    (folder / "checkpoint").write_text(f'model_checkpoint_path: "{PREFIX}"\n'
                                       f'all_model_checkpoint_paths: "{PREFIX}"\n', encoding="utf-8")
    return folder / PREFIX
