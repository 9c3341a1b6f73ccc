"""Raw corpus -> prepared dataset directory: read, split, select, tokenize, store; count every drop.

Sources: text files / directories, `peoples-daily` (the demo corpus), or `tfds:NAME[:SPLIT[:FIELD]]`
(a tensorflow-datasets text dataset already present in the local tfds data dir).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from t5pegasus.errors import UserError
from t5pegasus.pretrain.examples import ExampleConfig, ExampleMaker
from t5pegasus.pretrain.reading import decode_document, read_documents
from t5pegasus.text.base import Tokenizer

PEOPLES_DAILY = "peoples-daily"


def iter_source_documents(inputs: Sequence[str], stats: Counter[str], doc_sep: str = "line",
                          tfds_data_dir: str | os.PathLike | None = None) -> Iterator[str]:
    """Raw documents of the named inputs (see module doc), counted into `stats`. `tfds_data_dir`: where a
    `tfds:` dataset is looked for (default: tfds's own, $TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    if len(inputs) == 1 and inputs[0] == PEOPLES_DAILY:
        from t5pegasus.pretrain.corpora import iter_peoples_daily_documents

        for doc in iter_peoples_daily_documents():
            stats["documents read"] += 1
            yield doc
    elif len(inputs) == 1 and inputs[0].startswith("tfds:"):
        yield from _tfds_documents(inputs[0], stats, tfds_data_dir)
    else:
        yield from read_documents(inputs, stats, doc_sep)


def _tfds_documents(spec: str, stats: Counter[str], data_dir: str | os.PathLike | None) -> Iterator[str]:
    import tensorflow_datasets as tfds

    parts = spec.split(":")[1:] + ["", ""]
    name, split, field = parts[0], parts[1] or "train", parts[2] or "text"
    try:
        source = tfds.data_source(name, split=split, data_dir=None if data_dir is None else str(data_dir),
                                  download=False)
    except Exception as e:  # tfds raises many kinds for a missing dataset
        raise UserError(f"tfds dataset {name!r} split {split!r} is not available locally ({e})") from None
    for ex in source:
        value = ex.get(field) if isinstance(ex, dict) else None
        if value is None:
            raise UserError(f"tfds dataset {name!r} has no text field {field!r}; name it as tfds:{name}:SPLIT:FIELD")
        stats["documents read"] += 1
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        text = decode_document(raw, stats)
        if text is not None:
            yield text


def prepare_dataset(
    inputs: Sequence[str],
    out_dir: str | os.PathLike,
    tokenizer: Tokenizer,
    tokenizer_info: dict[str, Any],
    config: ExampleConfig,
    *,
    doc_sep: str = "line",
    tfds_data_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    workers: int = 1,
) -> Counter[str]:
    """Write the dataset; return the counts (files, documents read / used / dropped by reason, examples).

    `workers` > 1 makes the examples in that many processes (documents read here, in chunks, results taken back
    in input order), so the dataset is the same as with one: every example's randomness is seeded by its own
    text. The tokenizer is rebuilt in each worker from `tokenizer_info`'s path and kind."""
    from tqdm import tqdm

    from t5pegasus.pretrain.builder import write_dataset

    stats: Counter[str] = Counter()
    made: Counter[str] = Counter()  # what the example makers counted (in this process or the workers)
    show = sys.stderr.isatty() if progress is None else progress
    if workers < 1:
        raise UserError(f"--workers must be at least 1, not {workers}")

    def documents() -> Iterator[str]:
        docs = iter_source_documents(list(inputs), stats, doc_sep, tfds_data_dir)
        yield from tqdm(docs, desc="documents", unit=" doc", disable=not show, file=sys.stderr)

    def examples() -> Iterator[dict[str, Any]]:
        if workers == 1:
            maker = ExampleMaker(tokenizer, config)
            for doc in documents():
                yield from maker(doc)
            made.update(maker.stats)
            return
        for chunk_examples, chunk_stats in _in_workers(documents(), tokenizer_info, config, workers):
            made.update(chunk_stats)
            yield from chunk_examples

    def metadata() -> dict[str, Any]:
        stats.update(made)
        return {
            "inputs": [str(Path(i).resolve()) if Path(i).exists() else i for i in inputs],
            "tokenizer": tokenizer_info,
            "config": config.to_dict(),
            "stats": dict(sorted(stats.items())),
        }

    write_dataset(out_dir, config.task, examples, metadata, overwrite=overwrite)
    return stats


CHUNK_DOCUMENTS = 64  # documents per task sent to a worker
_WORKER: dict[str, ExampleMaker] = {}


def _start_worker(tokenizer_path: str, tokenizer_kind: str, config: ExampleConfig) -> None:
    from t5pegasus.text.load import load_tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker
    _WORKER["maker"] = ExampleMaker(load_tokenizer(tokenizer_path, kind=tokenizer_kind), config)


def _make_chunk(docs: list[str]) -> tuple[list[dict[str, Any]], Counter[str]]:
    maker = _WORKER["maker"]
    maker.stats = Counter()
    out = [ex for doc in docs for ex in maker(doc)]
    return out, maker.stats


def _in_workers(docs: Iterator[str], tokenizer_info: dict[str, Any], config: ExampleConfig,
                workers: int) -> Iterator[tuple[list[dict[str, Any]], Counter[str]]]:
    """(examples, counts) per chunk of documents, made by `workers` processes, in input order; at most two
    chunks per worker are in flight, so memory stays bounded whatever the corpus size."""
    import collections
    import itertools
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads (jieba, XLA)
    args = (str(tokenizer_info["path"]), str(tokenizer_info["kind"]), config)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=args) as pool:
        pending: collections.deque = collections.deque()
        chunks = iter(lambda: list(itertools.islice(docs, CHUNK_DOCUMENTS)), [])
        for chunk in chunks:
            pending.append(pool.submit(_make_chunk, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def summary_lines(stats: Counter[str]) -> list[str]:
    """Human summary: documents read, used, dropped (by reason) and repaired, examples written."""
    lines = [f"documents read: {stats['documents read']}", f"documents used: {stats['documents used']}"]
    dropped = {k: v for k, v in stats.items() if k.startswith("dropped") or "dropped" in k or "without" in k}
    lines += [f"  {k}: {v}" for k, v in sorted(dropped.items())]
    lines += [f"  {k}: {v}" for k, v in sorted(stats.items()) if k.startswith(("repaired", "files"))]
    lines.append(f"examples written: {stats['examples']}")
    return lines
