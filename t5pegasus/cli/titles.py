"""`t5pegasus titles OUT_DIR`: the People's Daily (headline, article) title task as train.jsonl / dev.jsonl.

The dev articles are the ones the default pretraining run holds out (see `t5pegasus.pretrain.title_pairs`).
"""

from __future__ import annotations

import argparse

from t5pegasus.pretrain.title_pairs import DEFAULT_EVAL_EVERY_NTH, write_title_pairs


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="folder to write train.jsonl and dev.jsonl into")
    parser.add_argument("--eval-every-nth", type=int, default=DEFAULT_EVAL_EVERY_NTH,
                        help="every n-th article is a dev article (the pretraining run's data.eval_every_nth, 50)")
    parser.add_argument("--max-body-chars", type=int, default=0, help="cut article bodies to N characters (0 = keep)")


def run(args: argparse.Namespace) -> int:
    train_path, dev_path, n_train, n_dev = write_title_pairs(
        args.out_dir, eval_every_nth=args.eval_every_nth, max_body_chars=args.max_body_chars)
    print(f"wrote {n_train} training pairs to {train_path} and {n_dev} dev pairs to {dev_path}")
    return 0
