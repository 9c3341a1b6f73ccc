"""`t5pegasus generate --model DIR [--input FILE] [--output FILE]`: generate text for each input line.

Inputs: a file, or standard input. Plain lines are sources; JSONL lines give theirs in "src"; a TSV line
title<TAB>content gives its content. On a terminal, stdin is an interactive loop (one line in, the output
out; Ctrl-D ends). Each output is one line; several returned sequences (--num-return) are tab-separated. A
language model (GPT / CPM-LM) takes a few-shot prompt (--prompt-file) put before every input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

from t5pegasus.cli.options import add_decoding_args, add_model_args


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    parser.add_argument("--input", metavar="FILE", help="input lines (default: standard input)")
    parser.add_argument("--output", metavar="FILE", help="write the outputs here (default: standard output)")
    parser.add_argument("--prompt-file", metavar="FILE",
                        help="a few-shot prompt put before every input, exactly as the file holds it (its line "
                             "ends too): GPT / CPM-LM language models")
    add_decoding_args(parser, max_length_help="default: the fine-tuned target length, else 64")


def _one_line(texts: list[str]) -> str:
    return "\t".join(" ".join(t.split("\n")) for t in texts)


def _sources(args: argparse.Namespace) -> list[str]:
    from t5pegasus.finetune.data import parse_pairs, read_pairs

    if args.input:
        return [p.src for p in read_pairs(args.input, need_target=False)]
    numbered = [(i, line.rstrip("\r\n")) for i, line in enumerate(sys.stdin, 1) if line.strip()]
    return [p.src for p in parse_pairs(numbered, "<stdin>", need_target=False)]


def _prompt(path: str) -> str:
    """The few-shot prompt file's text, exactly (a missing, empty or non-UTF-8 file is a UserError)."""
    from pathlib import Path

    from t5pegasus.errors import UserError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"prompt file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise UserError(f"prompt file {p} is empty")
    return text


def _interactive(predictor: Any, settings: Any, seed: int) -> int:
    print("type a source text and press Enter (Ctrl-D to end)", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if line.strip():
            print(_one_line(predictor([line], settings, seed)[0]), flush=True)


def _write(lines: Iterator[str], output: str | None) -> None:
    if output is None:
        for line in lines:
            print(line, flush=True)
        return
    from t5pegasus.fileio import write_text

    write_text(output, "".join(line + "\n" for line in lines))


def run(args: argparse.Namespace) -> int:
    from t5pegasus.cli.options import open_predictor

    sources = None
    prompt = _prompt(args.prompt_file) if args.prompt_file else ""
    if args.input or not sys.stdin.isatty():
        sources = _sources(args)  # read (and check) the inputs before loading the model
    predictor, settings = open_predictor(args, prompt)
    if sources is None:
        return _interactive(predictor, settings, args.seed)
    batches = predictor.batches(sources, settings, seed=args.seed)
    _write((_one_line(texts) for batch in batches for texts in batch), args.output)
    if args.output:
        print(f"wrote {len(sources)} outputs to {args.output}", file=sys.stderr)
    return 0
