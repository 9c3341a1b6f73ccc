"""`prepare --runner DirectRunner`: the Apache Beam pipeline (tfds runs our transform) writes the same examples
and counts as the local `prepare`. Beam is an optional extra (`t5pegasus[beam]`, it pins protobuf < 7): without
it the test is skipped and `--runner` is one clear error."""

import itertools
import json

import numpy as np
import pytest

from t5pegasus.cli import main
from t5pegasus.pretrain.builder import open_source
from t5pegasus.pretrain.corpora import iter_peoples_daily_documents, peoples_daily_paragraphs
from t5pegasus.text import build_wordpiece_vocab, save_vocab


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("beam")
    save_vocab(build_wordpiece_vocab(list(itertools.islice(peoples_daily_paragraphs(), 2000)), 3000), d / "vocab.txt")
    docs = list(itertools.islice(iter_peoples_daily_documents(), 90))
    (d / "c").mkdir()
    for i in range(3):
        (d / "c" / f"{i}.txt").write_text("\n\n".join(docs[i * 30:(i + 1) * 30]), encoding="utf-8")
    (d / "c" / "blob.bin").write_bytes(b"\x00" * 100)
    return d


def _prepare(d, name, *extra):
    return main(["prepare", str(d / "c"), "-o", str(d / name), "--tokenizer", str(d / "vocab.txt"), "--doc-sep",
                 "blank", "--max-source-len", "128", "--max-target-len", "48", *extra])


def test_beam_pipeline_writes_what_local_prepare_writes(corpus):
    pytest.importorskip("apache_beam")
    assert _prepare(corpus, "local", "--workers", "1") == 0
    assert _prepare(corpus, "beam", "--runner", "DirectRunner", "--pipeline-options=--direct_num_workers=1") == 0
    metas = [json.loads((corpus / n / "t5pegasus.json").read_text()) for n in ("local", "beam")]
    assert metas[0]["stats"] == metas[1]["stats"] and metas[1]["stats"]["files: skipped binary"] == 1
    assert metas[0]["num_examples"] == metas[1]["num_examples"] > 100 and metas[1]["beam_runner"] == "DirectRunner"

    def examples(name):
        source = open_source(corpus / name)
        return sorted((tuple(source[i]["source"]), tuple(source[i]["target"])) for i in range(len(source)))

    assert examples("local") == examples("beam")
    from t5pegasus.pretrain.loader import make_dataset

    batch = next(make_dataset(corpus / "beam", batch_size=4))  # the loader reads it as any prepared dataset
    assert batch["encoder_ids"].shape[0] == 4 and np.all(batch["encoder_mask"].sum(1) > 0)


def test_runner_without_beam_is_one_line(corpus, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_beam(name, *args, **kwargs):
        if name == "apache_beam" or name.startswith("apache_beam."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_beam)
    assert _prepare(corpus, "nobeam", "--runner", "DirectRunner") == 2
    err = capsys.readouterr().err
    assert 't5pegasus[beam]' in err and len(err.strip().splitlines()) == 1
