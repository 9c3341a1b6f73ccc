"""`t5pegasus pretrain`: placeholder until the pretraining loop lands (issue 6)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (default: the embedded T5 PEGASUS demo run)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the run config")


def run(args: argparse.Namespace) -> int:
    print("t5pegasus pretrain: the pretraining loop is not built yet (tracked in the pretraining issue).")
    return 1
