"""The People's Daily title task: dev articles are exactly those the default pretraining run holds out."""

import json

from t5pegasus.cli import main
from t5pegasus.pretrain.corpora import iter_peoples_daily_documents
from t5pegasus.training.runconfig import DataConfig


def test_dev_articles_are_the_pretraining_held_out_documents(tmp_path, capsys):
    assert main(["titles", str(tmp_path)]) == 0
    assert "dev pairs" in capsys.readouterr().out
    read = lambda name: [json.loads(line) for line in (tmp_path / name).read_text(encoding="utf-8").splitlines()]
    train, dev = read("train.jsonl"), read("dev.jsonl")
    n = DataConfig().eval_every_nth
    held = [doc for i, doc in enumerate(iter_peoples_daily_documents()) if i % n == n - 1]
    assert len(dev) > 40 and len(train) > 50 * len(dev) - 200
    for pair in dev:  # the headline and the body of a held-out document
        assert any(doc.startswith(pair["tgt"]) and doc.endswith(pair["src"]) for doc in held)
    held_bodies = {doc.split("\n", 1)[-1] for doc in held}
    assert not any(pair["src"] in held_bodies for pair in train)
    assert all(pair["src"] and pair["tgt"] and "\n" not in pair["tgt"] for pair in train + dev)
