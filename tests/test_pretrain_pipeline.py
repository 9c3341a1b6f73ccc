"""Prepare -> array_record -> grain batches: bad input, batch format, resume, process shards (People's Daily)."""

import itertools
import json
from collections import Counter

import numpy as np
import pytest

from t5pegasus.cli import main
from t5pegasus.errors import UserError
from t5pegasus.pretrain.corpora import iter_peoples_daily_documents, peoples_daily_paragraphs
from t5pegasus.pretrain.examples import ExampleConfig, ExampleMaker
from t5pegasus.pretrain.loader import make_dataset
from t5pegasus.text import BertJiebaTokenizer, build_wordpiece_vocab, save_vocab


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    paras = list(itertools.islice(peoples_daily_paragraphs(), 2000))
    save_vocab(build_wordpiece_vocab(paras, 5000), d / "vocab.txt")
    docs = list(itertools.islice(iter_peoples_daily_documents(), 60))
    (d / "corpus").mkdir()
    (d / "corpus" / "a.txt").write_text("\n\n".join(docs[:40]), encoding="utf-8")
    (d / "corpus" / "b.txt").write_bytes(
        "\n\n".join(docs[40:]).encode()
        + b"\n\n"
        + "第一句话。第二句话！".encode()
        + b"\xc3\x01"
        + "第三句话？".encode()
    )
    (d / "corpus" / "empty.txt").write_bytes(b"")
    (d / "corpus" / "blob.bin").write_bytes(b"\x00\x01\x02" * 1000)
    (d / "corpus" / "c.txt").write_bytes(b"\xff" * 500 + b"\n\n" + "只有一句话。".encode() + b"\n\n" +
                                         "Mixed 中文 and English. 第二句。Third one! 第四句？".encode())  # fmt: skip
    (d / "corpus" / "long.txt").write_text("很长的一行，" * 40_000, encoding="utf-8")  # one 240k-char line
    return d


def prepare(work, name, *extra):
    out = work / name
    args = ["prepare", str(work / "corpus"), "-o", str(out), "--tokenizer", str(work / "vocab.txt")]
    assert main(args + ["--doc-sep", "blank", "--max-source-len", "128", "--max-target-len", "48", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def seq2seq(work):
    return prepare(work, "s2s")


def test_prepare_counts_bad_input(seq2seq, capsys):
    meta = json.loads((seq2seq / "t5pegasus.json").read_text())
    stats = meta["stats"]
    assert stats["files: empty"] == 1 and stats["files: skipped binary"] == 1
    assert stats["dropped: invalid UTF-8"] == 1  # the block of 0xff bytes
    assert stats["repaired: invalid UTF-8 bytes removed"] == 1 and stats["repaired: control characters removed"] == 1
    assert stats["packed documents dropped: fewer than 3 sentences"] >= 1  # the one-sentence document
    assert stats["documents used"] >= 55  # every good article kept, the long line and the mixed one too
    # every document read is accounted for: used, or dropped for a counted reason
    assert stats["documents read"] == (stats["documents used"] + stats["dropped: invalid UTF-8"]
                                       + stats.get("documents without any example", 0))
    assert meta["num_examples"] == stats["examples"] > 200
    assert meta["tokenizer"]["special_ids"]["decoder_start"] == 101


def test_repaired_mixed_and_long_documents_reach_the_examples(seq2seq, work):
    """No silent loss: the repaired document, the mixed-script one and the 240k-character line all give examples."""
    tok = BertJiebaTokenizer(work / "vocab.txt")
    it = make_dataset(seq2seq, batch_size=1, shuffle=False, num_epochs=1, process_index=0, process_count=1,
                      drop_remainder=False)
    text = "".join(tok.decode(b["encoder_ids"][0]) + tok.decode(b["targets"][0]) for b in it).replace(" ", "")
    assert "第三句话" in text and "第一句话" in text  # the block with a bad byte and a control character
    assert "第二句。" in text and "第四句" in text  # mixed scripts (the Latin words are [UNK] in this vocab)
    assert text.count("很长的一行") > 100


def test_worker_processes_write_the_same_dataset_as_one(work, monkeypatch):
    """`prepare --workers 3` (processes making the examples of 7-document chunks here, so many chunks are in
    flight) and `--workers 1` write the same examples in the same order, with the same counts."""
    from t5pegasus.pretrain import prepare as prepare_module
    from t5pegasus.pretrain.builder import open_source

    monkeypatch.setattr(prepare_module, "CHUNK_DOCUMENTS", 7)
    one, three = prepare(work, "s2s-one", "--workers", "1"), prepare(work, "s2s-three", "--workers", "3")
    meta = [json.loads((d / "t5pegasus.json").read_text()) for d in (one, three)]
    assert meta[0]["stats"] == meta[1]["stats"] and meta[0]["num_examples"] == meta[1]["num_examples"] > 200
    a, b = open_source(one), open_source(three)
    assert len(a) == len(b)
    for i in range(len(a)):
        assert a[i].keys() == b[i].keys() and all(np.array_equal(a[i][k], b[i][k]) for k in a[i]), i


def test_prepare_user_errors(work, capsys):
    assert main(["prepare", str(work / "nope"), "-o", str(work / "x"), "--tokenizer", str(work / "vocab.txt")]) == 2
    (work / "only_empty").mkdir()
    (work / "only_empty" / "e.txt").write_text("")
    args = ["prepare", str(work / "only_empty"), "-o", str(work / "y"), "--tokenizer", str(work / "vocab.txt")]
    assert main(args) == 2
    assert not (work / "y").exists()
    assert "Traceback" not in capsys.readouterr().err


def test_seq2seq_batch_format(seq2seq):
    b = next(make_dataset(seq2seq, batch_size=4, process_index=0, process_count=1))
    assert {k: v.shape for k, v in b.items()} == {
        "encoder_ids": (4, 128), "encoder_mask": (4, 128), "decoder_ids": (4, 48), "targets": (4, 48),
        "target_mask": (4, 48), "weights": (4, 48),
    }  # fmt: skip
    assert all(v.dtype == np.int32 for v in b.values())
    assert (b["encoder_ids"][:, 0] == 101).all() and (b["decoder_ids"][:, 0] == 101).all()
    n = b["target_mask"].sum(1)
    for i in range(4):
        assert b["targets"][i, n[i] - 1] == 102  # target ends with [SEP]
        assert (b["decoder_ids"][i, 1 : n[i]] == b["targets"][i, : n[i] - 1]).all()  # shifted by one
        assert (b["encoder_ids"][i][b["encoder_mask"][i] == 0] == 0).all()


def collect(it, n):
    return [next(it) for _ in range(n)]


def same(a, b):
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_resume_yields_the_same_batches(seq2seq):
    kw = dict(batch_size=8, seed=3, process_index=0, process_count=1)
    full = collect(make_dataset(seq2seq, **kw), 70)  # crosses epoch boundaries
    it = make_dataset(seq2seq, **kw)
    collect(it, 33)
    state = json.loads(json.dumps(it.get_state()))
    resumed = make_dataset(seq2seq, **kw)
    resumed.set_state(state)
    assert all(same(a, b) for a, b in zip(full[33:], collect(resumed, 37), strict=True))


def test_shuffle_is_deterministic_by_seed(seq2seq):
    a = next(make_dataset(seq2seq, batch_size=8, seed=1, process_index=0, process_count=1))
    b = next(make_dataset(seq2seq, batch_size=8, seed=1, process_index=0, process_count=1))
    c = next(make_dataset(seq2seq, batch_size=8, seed=2, process_index=0, process_count=1))
    assert same(a, b) and not same(a, c)


def rows(path, **kw):
    it = make_dataset(path, batch_size=1, num_epochs=1, drop_remainder=False, **kw)
    return [tuple(b["encoder_ids"][0]) + tuple(b["targets"][0]) for b in it]


def test_two_processes_see_disjoint_complete_shards(seq2seq):
    everything = Counter(rows(seq2seq, process_index=0, process_count=1))
    kw = dict(batch_size=2, num_epochs=1, drop_remainder=False)
    p0 = [tuple(b["encoder_ids"][0]) + tuple(b["targets"][0]) for b in make_dataset(seq2seq, rows=[0], **kw)]
    p1 = [tuple(b["encoder_ids"][0]) + tuple(b["targets"][0]) for b in make_dataset(seq2seq, rows=[1], **kw)]
    assert Counter(p0) + Counter(p1) == everything  # together: every example exactly once
    unique = {r for r, n in everything.items() if n == 1}  # (the repeated long line gives equal examples)
    assert len(unique) > 100 and not (set(p0) & set(p1) & unique)
    assert abs(len(p0) - len(p1)) <= 1


@pytest.mark.parametrize("pack", [False, True])
def test_each_process_reads_its_block_of_the_one_global_batch(seq2seq, pack):
    """Process p of k gets rows p*B/k.. of the very batch one process reads (any k), also with packing; the
    position is global: a 2-process position resumes a 1-process reader at the same batch, and the reverse."""
    kw = dict(batch_size=8, seed=5, pack=pack, max_source_len=128, max_target_len=48)
    one = collect(make_dataset(seq2seq, process_index=0, process_count=1, **kw), 6)
    for k in (2, 4):
        parts = [collect(make_dataset(seq2seq, process_index=p, process_count=k, **kw), 6) for p in range(k)]
        for j, whole in enumerate(one):
            assert same(whole, {f: np.concatenate([part[j][f] for part in parts]) for f in whole})
    odd = collect(make_dataset(seq2seq, rows=[1, 6], **kw), 6)  # any rows, as a mesh may place them
    assert all(same({f: v[[1, 6]] for f, v in a.items()}, b) for a, b in zip(one, odd, strict=True))
    second = make_dataset(seq2seq, process_index=1, process_count=2, **kw)
    collect(second, 3)
    resumed = make_dataset(seq2seq, process_index=0, process_count=1, **kw)
    resumed.set_state(json.loads(json.dumps(second.get_state())))
    assert all(same(a, b) for a, b in zip(one[3:], collect(resumed, 3), strict=True))
    single = make_dataset(seq2seq, process_index=0, process_count=1, **kw)
    collect(single, 2)
    block = make_dataset(seq2seq, process_index=3, process_count=4, **kw)
    block.set_state(single.get_state())
    assert same(next(block), {f: v[6:] for f, v in one[2].items()})
    with pytest.raises(UserError, match="does not split over 3 processes"):
        make_dataset(seq2seq, process_index=0, process_count=3, **kw)


def test_a_position_of_the_per_process_reader_before_global_batches_still_resumes(seq2seq):
    kw = dict(batch_size=8, seed=3, process_index=0, process_count=1)
    full = collect(make_dataset(seq2seq, **kw), 4)
    it = make_dataset(seq2seq, **kw)
    it.set_state({"next_index": 16})  # grain's example count, as one process saved it
    assert same(next(it), full[2])


def test_packing(seq2seq):
    kw = dict(max_source_len=512, max_target_len=192, process_index=0, process_count=1)
    b = next(make_dataset(seq2seq, batch_size=4, pack=True, **kw))
    assert b["encoder_segment_ids"].max() >= 2  # several examples in one row
    assert ((b["target_mask"] == 1) == (b["decoder_segment_ids"] > 0)).all()
    assert (b["encoder_ids"][b["encoder_segment_ids"] == 0] == 0).all()


def test_lm_and_unilm_batches(work):
    lm = next(make_dataset(prepare(work, "lm", "--task", "lm", "--max-len", "64"), batch_size=2,
                           process_index=0, process_count=1))  # fmt: skip
    assert lm["ids"].shape == lm["targets"].shape == lm["weights"].shape == (2, 63)
    n = lm["weights"].sum(1)
    assert (lm["ids"][:, 1 : n[0]][0] == lm["targets"][:, : n[0] - 1][0]).all()
    uni = next(make_dataset(prepare(work, "uni", "--task", "unilm"), batch_size=2, process_index=0, process_count=1))
    assert uni["ids"].shape == uni["segment_ids"].shape == (2, 176)
    for i in range(2):
        ids, seg, tgt, w = uni["ids"][i], uni["segment_ids"][i], uni["targets"][i], uni["weights"][i]
        assert ids[0] == 101 and seg[0] == 0 and seg.max() == 1
        assert (tgt[:-1][w[:-1] == 1] == ids[1:][seg[1:] == 1]).all()  # predicts exactly the target tokens


def test_pegasus_examples_mask_sentences(work):
    tok = BertJiebaTokenizer(work / "vocab.txt")
    maker = ExampleMaker(tok, ExampleConfig(task="pegasus"))
    doc = next(iter_peoples_daily_documents())
    ex = next(iter(maker(doc)))
    assert (ex["source"] == tok.mask_id).sum() >= 1 and ex["target"][0] == 101


def test_prepare_reads_a_local_tfds_dataset(work, tmp_path, capsys):
    """tfds:NAME:SPLIT:FIELD from --tfds-data-dir: a small array_record dataset built here (its builder class
    is not what `prepare` imports), every document read, examples written; a missing one is a one-line error."""
    import tensorflow_datasets as tfds
    from etils import epath

    docs = list(itertools.islice(iter_peoples_daily_documents(), 12))

    class PeoplesDailyTexts(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        code_path = epath.Path(__file__)  # as pretrain/builder.py: no importlib_resources lookup

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"body": tfds.features.Text(), "id": tfds.features.Scalar(np.int32)}))

        def _split_generators(self, dl_manager):
            return {"validation": self._generate_examples()}

        def _generate_examples(self):
            for i, doc in enumerate(docs):
                yield i, {"body": doc, "id": i}

    data_dir = tmp_path / "tfds"
    PeoplesDailyTexts(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    out = tmp_path / "from-tfds"
    common = ["-o", str(out), "--tokenizer", str(work / "vocab.txt"), "--tfds-data-dir", str(data_dir),
              "--max-source-len", "128", "--max-target-len", "48"]
    assert main(["prepare", "tfds:peoples_daily_texts:validation:body", *common]) == 0
    meta = json.loads((out / "t5pegasus.json").read_text())
    assert meta["stats"]["documents read"] == len(docs) and meta["num_examples"] == meta["stats"]["examples"] > 0
    capsys.readouterr()
    assert main(["prepare", "tfds:peoples_daily_texts:train:body", *common, "--overwrite"]) == 2
    assert "is not available locally" in capsys.readouterr().err
