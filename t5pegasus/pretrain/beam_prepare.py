"""`t5pegasus prepare --runner RUNNER`: the prepared dataset made by an Apache Beam pipeline, for corpora past one
machine (Dataflow, Flink, Spark runners; the DirectRunner on one machine).

tensorflow-datasets builds datasets with Beam itself: our tfds builder's `_generate_examples` returns a Beam
transform instead of a generator, and tfds shards and writes the array_record files from the Beam workers. Each
input file is one element: a worker opens it through Beam's file systems (local paths, gs://, hdfs://, ...),
reads its documents exactly as the local reader does and makes the examples; the counts (documents read, used,
dropped by reason) are combined into one JSON file beside the dataset and end up in `t5pegasus.json`. Keys are
(file, document, example) positions, so the dataset holds the same examples as a local `prepare`, stored in
tfds's key-hash order.

Beam is an optional extra (`pip install "t5pegasus[beam]"`): it pins protobuf below 7, older than what the rest of
the stack resolves to here, so it is not installed with the project. Workers need t5pegasus installed too
(a container image, or `--setup_file`; see docs/data.md).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from t5pegasus.errors import UserError
from t5pegasus.pretrain.examples import ExampleConfig

STATS_NAME = "beam-stats"


def import_beam() -> Any:
    try:
        import apache_beam as beam
    except ImportError:
        raise UserError('prepare --runner needs Apache Beam: pip install "t5pegasus[beam]"') from None
    return beam


def input_files(inputs: Sequence[str]) -> list[str]:
    """Files named by the inputs: local files and folders (walked as the local reader does), or glob patterns
    any Beam file system understands (gs://bucket/corpus/*.txt)."""
    from t5pegasus.pretrain.prepare import PEOPLES_DAILY
    from t5pegasus.pretrain.reading import list_files

    local = [i for i in inputs if "://" not in i]
    if any(i == PEOPLES_DAILY or i.startswith("tfds:") for i in local):
        raise UserError("prepare --runner reads text files; give the corpus as files, folders or patterns")
    files = [str(f) for f in list_files(local)] if local else []
    remote = [i for i in inputs if "://" in i]
    if remote:
        from apache_beam.io.filesystems import FileSystems

        for pattern in remote:
            matched = sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
            if not matched:
                raise UserError(f"input {pattern} matches no file")
            files += matched
    if not files:
        raise UserError("no input files found")
    return files


class _FileExamples:
    """One input file -> its (key, example) pairs, and its counts as a tagged output (picklable for workers)."""

    def __init__(self, tokenizer_path: str, tokenizer_kind: str, config: ExampleConfig, doc_sep: str) -> None:
        self.tokenizer_path, self.tokenizer_kind, self.config, self.doc_sep = (tokenizer_path, tokenizer_kind,
                                                                               config, doc_sep)
        self._maker: Any = None

    def __call__(self, element: tuple[int, str]) -> Iterator[Any]:
        from apache_beam import pvalue
        from apache_beam.io.filesystems import FileSystems

        from t5pegasus.pretrain.examples import ExampleMaker
        from t5pegasus.pretrain.reading import file_documents
        from t5pegasus.text.load import load_tokenizer

        if self._maker is None:  # once per worker: the tokenizer is not picklable (jieba)
            self._maker = ExampleMaker(load_tokenizer(self.tokenizer_path, kind=self.tokenizer_kind), self.config)
        index, path = element
        stats: Counter[str] = Counter()
        self._maker.stats = Counter()
        with FileSystems.open(path) as f:
            for d, doc in enumerate(file_documents(f, stats, self.doc_sep)):
                for e, example in enumerate(self._maker(doc)):
                    yield f"{index:08d}:{d:010d}:{e:04d}", example
        stats.update(self._maker.stats)
        yield pvalue.TaggedOutput("stats", dict(stats))


def _sum_counts(counts: Any) -> dict[str, int]:
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(total)


def examples_transform(files: list[str], tokenizer_info: dict[str, Any], config: ExampleConfig, doc_sep: str,
                       stats_prefix: str) -> Any:
    """The Beam transform tfds applies to its pipeline: files -> (key, example), the counts written as JSON."""
    beam = import_beam()
    make = _FileExamples(str(tokenizer_info["path"]), str(tokenizer_info["kind"]), config, doc_sep)

    class Examples(beam.PTransform):
        def expand(self, pipeline: Any) -> Any:
            out = (pipeline
                   | "files" >> beam.Create(list(enumerate(files)))
                   | "spread" >> beam.Reshuffle()
                   | "examples" >> beam.FlatMap(make).with_outputs("stats", main="examples"))
            _ = (out.stats
                 | "sum counts" >> beam.CombineGlobally(_sum_counts)
                 | "as json" >> beam.Map(lambda c: json.dumps(c, sort_keys=True))
                 | "write counts" >> beam.io.WriteToText(stats_prefix, shard_name_template="", num_shards=1))
            return out.examples

    return Examples()


def prepare_with_beam(inputs: Sequence[str], out_dir: str | os.PathLike, tokenizer_info: dict[str, Any],
                      config: ExampleConfig, *, runner: str, beam_args: Sequence[str] = (), doc_sep: str = "line",
                      overwrite: bool = False) -> Counter[str]:
    """Write the prepared dataset at `out_dir` with a Beam pipeline on `runner` (`beam_args`: its pipeline
    options, e.g. --project, --region, --temp_location for Dataflow); returns the counts."""
    import tensorflow_datasets as tfds

    from t5pegasus.pretrain.builder import write_dataset
    from t5pegasus.pretrain.reading import check_doc_sep

    beam = import_beam()
    check_doc_sep(doc_sep)
    files = input_files(list(inputs))
    stats: Counter[str] = Counter()

    def transform(tmp: Path) -> Any:
        return examples_transform(files, tokenizer_info, config, doc_sep, str(tmp / STATS_NAME))

    def counts(tmp: Path) -> dict[str, Any]:
        path = tmp / STATS_NAME
        stats.update(json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {})
        path.unlink(missing_ok=True)
        return {"inputs": [str(Path(i).resolve()) if Path(i).exists() else i for i in inputs],
                "tokenizer": tokenizer_info, "config": config.to_dict(), "stats": dict(sorted(stats.items())),
                "beam_runner": runner}

    download = tfds.download.DownloadConfig(beam_runner=runner,
                                            beam_options=beam.options.pipeline_options.PipelineOptions(
                                                list(beam_args)))
    write_dataset(out_dir, config.task, None, None, overwrite=overwrite, beam=(transform, counts, download))
    return stats
