"""`t5pegasus generate --model DIR [--input FILE] [--output FILE]`: generate text for each input line.

Inputs: a file, or standard input. Plain lines are sources; JSONL lines give theirs in "src" ("" to generate
from nothing) and may give a condition "label"; a TSV line title<TAB>content gives its content. A model with a
label embedding generates under a condition label: `--condition K` for every input that names none. On a
terminal, stdin is an interactive loop (one line in, the output out; Ctrl-D ends). Each output is one line;
several returned sequences (--num-return) are tab-separated. A language model (GPT / CPM-LM) takes a few-shot
prompt (--prompt-file) put before every input.
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
    parser.add_argument("--condition", metavar="LABEL",
                        help="the condition label to generate under (a model fine-tuned on labelled data: one of "
                             "the labels it was trained with, e.g. pos); JSONL lines with their own \"label\" keep it")
    add_decoding_args(parser, max_length_help="default: the fine-tuned target length, else 64")


def _one_line(texts: list[str]) -> str:
    return "\t".join(" ".join(t.split("\n")) for t in texts)


def _inputs(args: argparse.Namespace) -> tuple[list[str], list[Any]]:
    """(sources, their condition labels: a line's own, else --condition, else None)."""
    from t5pegasus.finetune.data import parse_pairs, read_pairs

    if args.input:
        pairs = read_pairs(args.input, need_target=False)
    else:
        numbered = [(i, line.rstrip("\r\n")) for i, line in enumerate(sys.stdin, 1) if line.strip()]
        pairs = parse_pairs(numbered, "<stdin>", need_target=False)
    return [p.src for p in pairs], [args.condition if p.label is None else p.label for p in pairs]


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


def _interactive(predictor: Any, settings: Any, seed: int, condition: str | None) -> int:
    print("type a source text and press Enter (Ctrl-D to end)", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        if line.strip():
            labels = None if condition is None else [condition]
            print(_one_line(predictor([line], settings, seed, labels)[0]), flush=True)


def _write(lines: Iterator[str], output: str | None) -> None:
    if output is None:
        for line in lines:
            print(line, flush=True)
        return
    from t5pegasus.fileio import write_text

    write_text(output, "".join(line + "\n" for line in lines))


def run(args: argparse.Namespace) -> int:
    from t5pegasus.cli.options import open_predictor

    sources = labels = None
    prompt = _prompt(args.prompt_file) if args.prompt_file else ""
    if args.input or not sys.stdin.isatty():
        sources, labels = _inputs(args)  # read (and check) the inputs before loading the model
    predictor, settings = open_predictor(args, prompt)
    if sources is None:
        return _interactive(predictor, settings, args.seed, args.condition)
    batches = predictor.batches(sources, settings, seed=args.seed, labels=labels)
    _write((_one_line(texts) for batch in batches for texts in batch), args.output)
    if args.output:
        print(f"wrote {len(sources)} outputs to {args.output}", file=sys.stderr)
    return 0
