"""Store examples as array_record shards through a tensorflow-datasets builder (TensorFlow not needed).

Layout of a prepared dataset directory:
    DIR/t5pegasus.json                       task, tokenizer, example config, counts (our metadata)
    DIR/t5pegasus_examples/<task>/1.0.0/...  tfds: dataset_info.json, features.json, *.array_record-*
The directory appears in one rename when everything is written (`fileio.atomic_dir`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from t5pegasus.errors import UserError
from t5pegasus.fileio import atomic_dir, write_text
from t5pegasus.pretrain.examples import FEATURES, TASKS

META_FILE = "t5pegasus.json"
BUILDER_NAME = "t5pegasus_examples"


class T5pegasusExamples(tfds.core.GeneratorBasedBuilder):
    """Int32 token sequences, one config per task; examples come from a callable set before preparing."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=t, description=f"{t} examples") for t in TASKS]

    # tfds finds a builder's source file through importlib_resources (not installed with tfds 4.9.10)
    # when the builder lives in a regular package; this file is the answer.
    code_path = epath.Path(__file__)

    def __init__(self, *, examples: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None,
                 beam_examples: Any = None, extra_features: tuple[str, ...] = (), **kwargs):
        self._extra_features = tuple(extra_features)  # before tfds reads `_info`
        super().__init__(**kwargs)
        self._examples = examples
        self._beam_examples = beam_examples  # a Beam PTransform of (key, example) pairs: tfds runs it with Beam

    def _info(self) -> tfds.core.DatasetInfo:
        names = FEATURES[self.builder_config.name] + self._extra_features
        features = {f: tfds.features.Tensor(shape=(None,), dtype=np.int32) for f in names}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        if self._beam_examples is not None:
            return self._beam_examples
        if self._examples is None:
            raise RuntimeError("no example source given")
        return enumerate(self._examples())


def write_dataset(
    out_dir: str | os.PathLike,
    task: str,
    examples: Callable[[], Iterable[dict[str, np.ndarray]]] | None,
    metadata: Callable[[], dict[str, Any]] | None,
    *,
    overwrite: bool = False,
    beam: tuple[Callable[[Path], Any], Callable[[Path], dict[str, Any]], Any] | None = None,
    extra_features: tuple[str, ...] = (),
) -> Path:
    """Write examples as array_record shards plus `t5pegasus.json` (`metadata()` is called after);
    `extra_features`: int32 fields every example has beside the task's (a fine-tuning pair's condition `label`).

    With `beam` = (transform(tmp), metadata(tmp), tfds DownloadConfig) the examples come from a Beam transform of
    (key, example) pairs that tfds runs on the config's runner, in place of `examples` / `metadata`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise UserError(f"{out_dir} exists; choose another output or pass --overwrite")
    tfds.disable_progress_bar()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        count = [0]

        def counted():
            for ex in examples():
                count[0] += 1
                yield ex

        kwargs: dict[str, Any] = {}
        if beam is not None:
            kwargs = {"beam_examples": beam[0](tmp)}
        builder = T5pegasusExamples(examples=None if beam else counted, config=task, data_dir=str(tmp),
                                    file_format="array_record", extra_features=extra_features, **kwargs)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # tfds prints a banner; our caller reports
                builder.download_and_prepare(**({"download_config": beam[2]} if beam else {}))
        except AssertionError:
            if count[0] == 0:  # tfds refuses an empty split
                raise UserError("no examples were produced from the input (empty or unusable documents)") from None
            raise
        meta = dict(beam[1](tmp) if beam else metadata())
        meta["task"] = task
        meta["tfds_dir"] = str(Path(builder.data_dir).relative_to(tmp))
        meta["num_examples"] = int(builder.info.splits["train"].num_examples)
        if meta["num_examples"] == 0:
            raise UserError("no examples were produced from the input; see the summary above for why")
        write_text(tmp / META_FILE, json.dumps(meta, ensure_ascii=False, indent=2))
        shutil.rmtree(tmp / "downloads", ignore_errors=True)  # tfds's empty download cache
    return out_dir


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `t5pegasus.json` of a prepared dataset directory."""
    meta = Path(path) / META_FILE
    if not meta.is_file():
        raise UserError(f"{path} is not a prepared dataset (no {META_FILE}); run `t5pegasus prepare`")
    return json.loads(meta.read_text(encoding="utf-8"))


def open_source(path: str | os.PathLike, split: str = "train"):
    """Random-access source of decoded examples (dicts of int32 arrays) for grain."""
    meta = read_metadata(path)
    builder = tfds.builder_from_directory(str(Path(path) / meta["tfds_dir"]))
    return builder.as_data_source(split=split)
