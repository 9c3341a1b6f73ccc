"""`t5pegasus vocab`: a T5 PEGASUS vocab.txt (characters + frequent jieba words), or sentencepiece."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="text files or directories, or 'peoples-daily'")
    parser.add_argument("-o", "--output", required=True, help="vocab.txt, or the .model file with --spm")
    parser.add_argument("--size", type=int, default=50000, help="vocabulary size (default 50000)")
    parser.add_argument("--min-count", type=int, default=2, help="least frequency of a jieba word kept")
    parser.add_argument("--spm", action="store_true", help="train a sentencepiece model instead")
    parser.add_argument("--cpm", action="store_true", help="sentencepiece on CPM-style jieba-cut text")
    parser.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "char", "word"])
    parser.add_argument("--character-coverage", type=float, default=0.9995)
    parser.add_argument("--doc-sep", default="line", choices=["line", "blank"])


def run(args: argparse.Namespace) -> int:
    from collections import Counter

    from t5pegasus.errors import UserError
    from t5pegasus.pretrain.prepare import iter_source_documents
    from t5pegasus.text.vocab import build_wordpiece_vocab, save_vocab, train_sentencepiece

    if args.size < 200:
        raise UserError("--size must be at least 200")
    stats: Counter[str] = Counter()
    docs = iter_source_documents(args.inputs, stats, args.doc_sep)
    if args.spm or args.cpm:
        train_sentencepiece(
            docs, args.output, args.size, model_type=args.model_type, cpm=args.cpm,
            character_coverage=args.character_coverage,
        )  # fmt: skip
        print(f"trained a {args.model_type} sentencepiece model of {args.size} pieces: {args.output}")
    else:
        tokens = build_wordpiece_vocab(docs, args.size, min_count=args.min_count)
        save_vocab(tokens, args.output)
        print(f"wrote {len(tokens)} tokens to {args.output}")
    print(f"documents read: {stats['documents read']}")
    return 0
