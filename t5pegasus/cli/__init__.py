"""The `t5pegasus` command: one entry point, one subcommand per job.

Each subcommand is a module of this package named after it (`t5pegasus.cli.pretrain`, ...), with
`configure(parser: argparse.ArgumentParser) -> None` and `run(args: argparse.Namespace) -> int`; the work itself
is done by the layers below (training, pretrain, finetune, convert, text). Those modules import heavy libraries
(JAX, torch) inside `run`, so `--help` stays fast. `python -m t5pegasus.cli` runs `main` (see `__main__.py`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from t5pegasus import __version__
from t5pegasus.errors import UserError
from t5pegasus.host_memory import retain_freed_memory

# name -> (module, one-line help). A module that is not there yet is left out of the command.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("t5pegasus.cli.pretrain", "pretrain a model (default: T5 PEGASUS on the demo corpus)"),
    "prepare": ("t5pegasus.cli.prepare", "turn raw text into a pretraining dataset"),
    "vocab": ("t5pegasus.cli.vocab", "build a vocabulary (WordPiece + jieba, or sentencepiece)"),
    "shuffle": ("t5pegasus.cli.shuffle", "globally shuffle a text file larger than memory"),
    "titles": ("t5pegasus.cli.titles", "write the People's Daily title task as train / dev JSONL files"),
    "convert": ("t5pegasus.cli.convert", "convert checkpoints between run, HF, TF and Megatron formats"),
    "finetune": ("t5pegasus.cli.finetune", "fine-tune a model on seq2seq or LM data"),
    "generate": ("t5pegasus.cli.generate", "generate text from a model"),
    "evaluate": ("t5pegasus.cli.evaluate", "evaluate a model with ROUGE and BLEU"),
    "similar": ("t5pegasus.cli.similar", "generate sentences similar to each input and rank them (SimBERT)"),
    "encode": ("t5pegasus.cli.encode", "write the sentence vector of every line of a file (SimBERT)"),
    "search": ("t5pegasus.cli.search", "find each query's nearest corpus sentences by cosine (SimBERT)"),
}


def _available() -> dict[str, tuple[object, str]]:
    found = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                continue
            raise
        found[name] = (module, help_text)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t5pegasus",
        description="Pretrain, fine-tune, convert and run T5 PEGASUS / mT5 / UniLM / GPT models with JAX.",
    )
    parser.add_argument("--version", action="version", version=f"t5pegasus {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in _available().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(p)  # type: ignore[attr-defined]
        p.set_defaults(_run=module.run)  # type: ignore[attr-defined]
    return parser


def _quiet_library_logs() -> None:
    """Keep TensorFlow's C++ start-up lines and absl INFO/WARNING chatter (orbax) off a user's terminal."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF (tfds, TF checkpoints) only does I/O for us
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    _quiet_library_logs()
    retain_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"t5pegasus {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"t5pegasus {args.command}: interrupted", file=sys.stderr)
        return 130
