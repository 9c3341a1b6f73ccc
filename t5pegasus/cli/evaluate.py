"""`t5pegasus evaluate --model DIR --data FILE`: generate for every pair's source, score against its target.

Prints a table of ROUGE-1/2/L F1 (character-level for Chinese) and corpus BLEU, all in percent; `--json` prints
one JSON object instead; `--predictions FILE` keeps the generated texts (one line per pair).
"""

from __future__ import annotations

import argparse
import json
import sys

from t5pegasus.cli.options import add_decoding_args, add_model_args


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    parser.add_argument("--data", required=True, metavar="FILE",
                        help='pairs to score: JSONL {"src": ..., "tgt": ...} (with a "label" for a conditioned model) '
                             'or TSV title<TAB>content')
    parser.add_argument("--limit", type=int, default=0, help="score the first N pairs only (0 = all)")
    parser.add_argument("--predictions", metavar="FILE", help="write the generated texts here, one per line")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    add_decoding_args(parser, max_length_help="default: the fine-tuned target length, else 64")


def _table(metrics: dict[str, float], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(title, soft_wrap=True)
    table = Table()
    table.add_column("metric")
    table.add_column("score", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.2f}")
    console.print(table)


def run(args: argparse.Namespace) -> int:
    from t5pegasus.cli.options import open_predictor
    from t5pegasus.finetune.data import read_pairs
    from t5pegasus.finetune.metrics import score

    pairs = read_pairs(args.data)
    if args.limit:
        pairs = pairs[: args.limit]
    predictor, settings = open_predictor(args)
    labels = [p.label for p in pairs] if any(p.label is not None for p in pairs) else None
    predictions = [texts[0] for texts in predictor([p.src for p in pairs], settings, seed=args.seed, labels=labels)]
    metrics = score(predictions, [p.tgt for p in pairs])
    if args.predictions:
        from t5pegasus.fileio import write_text

        write_text(args.predictions, "".join(" ".join(t.split("\n")) + "\n" for t in predictions))
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, "examples": len(pairs), **metrics}))
    else:
        _table(metrics, f"{args.model} on {args.data}: {len(pairs)} pairs, scores in percent")
        if args.predictions:
            print(f"predictions written to {args.predictions}", file=sys.stderr)
    return 0
