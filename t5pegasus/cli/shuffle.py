"""`t5pegasus shuffle BIG.txt -o OUT --memory 256M`: global shuffle of a file larger than memory."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="text file, one example per line")
    parser.add_argument("-o", "--output", required=True, help="shuffled file to write")
    parser.add_argument("--memory", default="256M", help="memory budget, e.g. 256M or 2G (default 256M)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp-dir", default=None, help="folder for bucket files (default: beside the output)")


def run(args: argparse.Namespace) -> int:
    from t5pegasus.pretrain.shuffle import parse_size, shuffle_file

    stats = shuffle_file(args.input, args.output, parse_size(args.memory), seed=args.seed, tmp_dir=args.tmp_dir)
    print(f"shuffled {stats.lines} lines ({stats.bytes} bytes, {stats.buckets} buckets) into {args.output}")
    return 0
