"""Write the People's Daily (headline, article) title-generation task as JSONL train / dev files.

`t5pegasus titles OUT_DIR` (`write_title_pairs`) writes OUT_DIR/train.jsonl and OUT_DIR/dev.jsonl with
`{"src": article body, "tgt": headline}` lines. The dev articles are the ones the default pretraining run holds
out (every `eval_every_nth`-th article, `data.eval_every_nth` of a pretraining run config), so a model pretrained
with `t5pegasus pretrain` has never seen a dev article, not even as a pseudo-summary document.
"""

from __future__ import annotations

import json
from pathlib import Path

from t5pegasus.fileio import write_text

DEFAULT_EVAL_EVERY_NTH = 50  # t5pegasus.training.runconfig.DataConfig.eval_every_nth


def split_title_pairs(eval_every_nth: int = DEFAULT_EVAL_EVERY_NTH, min_title_chars: int = 4,
                      max_body_chars: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, dev) pairs; an article goes to dev when its corpus index i has i % n == n - 1."""
    from t5pegasus.pretrain.corpora import peoples_daily_articles

    train: list[dict[str, str]] = []
    dev: list[dict[str, str]] = []
    for i, (head, body) in enumerate(peoples_daily_articles()):
        if not head or not body or len(head[0]) < min_title_chars:
            continue
        text = "\n".join(body)
        if max_body_chars:
            text = text[:max_body_chars]
        held_out = eval_every_nth > 0 and i % eval_every_nth == eval_every_nth - 1
        (dev if held_out else train).append({"src": text, "tgt": head[0]})
    return train, dev


def write_title_pairs(out_dir: str | Path, **options: int) -> tuple[Path, Path, int, int]:
    """Write train.jsonl and dev.jsonl under `out_dir` (atomically); returns the paths and their sizes."""
    train, dev = split_title_pairs(**options)
    out = Path(out_dir)
    paths = out / "train.jsonl", out / "dev.jsonl"
    for path, pairs in zip(paths, (train, dev), strict=True):
        write_text(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    return paths[0], paths[1], len(train), len(dev)

