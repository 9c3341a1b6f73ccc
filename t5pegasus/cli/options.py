"""Command-line options shared by finetune / generate / evaluate: decoding settings and the model's tokenizer.

Imports nothing heavy, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_decoding_args(parser: argparse.ArgumentParser, *, max_length_help: str, seed: bool = True) -> None:
    """Options mirroring `t5pegasus.decoding.Settings` (lengths count new tokens, the end token included)."""
    g = parser.add_argument_group("decoding")
    g.add_argument("--beams", type=int, default=1, help="beam size; 1 = greedy or sampling (1)")
    g.add_argument("--sample", action="store_true", help="sample instead of taking the most likely token")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (1.0)")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    g.add_argument("--min-length", type=int, default=0, help="new tokens before the end token is allowed (0)")
    g.add_argument("--max-length", type=int, default=None, help=f"most new tokens ({max_length_help})")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="HF/CTRL repetition penalty (1.0 = off)")
    g.add_argument("--no-repeat-ngram", type=int, default=0, help="ban repeating n-grams of this size (0 = off)")
    g.add_argument("--num-return", type=int, default=1, help="sequences per input (sampling or beams) (1)")
    g.add_argument("--length-penalty", type=float, default=1.0, help="beam score / length**penalty (1.0)")
    g.add_argument("--early-stopping", choices=("true", "false", "never"), default="false",
                   help="beam search: true stops an input once --beams hypotheses ended, false uses HF's "
                        "heuristic, never runs to the end (false)")
    if seed:
        g.add_argument("--seed", type=int, default=0, help="sampling seed (0)")


def settings_from_args(args: argparse.Namespace, max_length: int) -> Any:
    """The `Settings` the decoding options ask for (`max_length` when --max-length is not given)."""
    from t5pegasus.decoding import Settings

    early: bool | str = {"true": True, "false": False}.get(args.early_stopping, args.early_stopping)
    return Settings(max_new_tokens=args.max_length or max_length, min_new_tokens=args.min_length,
                    num_beams=args.beams, num_return_sequences=args.num_return, length_penalty=args.length_penalty,
                    early_stopping=early, do_sample=args.sample, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                    no_repeat_ngram_size=args.no_repeat_ngram)


def model_kind_choices() -> list[str]:
    """Every model kind some family knows (BERT: bert, unilm, simbert)."""
    from t5pegasus import families

    return sorted({k for f in families.all_families() for k in f.model_kinds})


def add_model_kind_arg(parser: argparse.ArgumentParser, what: str = "the model") -> None:
    parser.add_argument("--model-kind", choices=model_kind_choices(), default=None,
                        help=f"what {what} is, where its folder does not say: a Google-BERT-named TF checkpoint or "
                             "HF BERT reads as plain BERT; simbert = UniLM mask + linear pooler (the released "
                             "SimBERT), unilm = UniLM mask. Folders written from it record it")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="a fine-tuned model (<run>/best), a training run (latest checkpoint), a fine-tuning "
                             "run (its best model), a HF transformers folder or a TF checkpoint folder such as the "
                             "T5 PEGASUS release")
    parser.add_argument("--ema", action="store_true", help="use a training run's averaged (EMA) weights")
    parser.add_argument("--tokenizer", metavar="FILE", help="tokenizer file (vocab.txt or *.model); default: the "
                                                           "model folder's own")
    add_model_kind_arg(parser)
    parser.add_argument("--max-source-len", type=int, default=None,
                        help="truncate sources to this many tokens (default: what the model was fine-tuned with, "
                             "else 512)")
    parser.add_argument("--batch-size", type=int, default=16, help="inputs decoded together (16)")


def open_predictor(args: argparse.Namespace) -> tuple[Any, Any]:
    """(Predictor, settings) for --model and the decoding options."""
    from t5pegasus.convert.model_folder import load_model
    from t5pegasus.finetune.predict import Predictor

    if args.batch_size < 1:
        from t5pegasus.errors import UserError

        raise UserError("--batch-size must be at least 1")
    loaded = load_model(args.model, ema=args.ema, tokenizer=args.tokenizer, model_kind=args.model_kind)
    info = loaded.info
    max_source = args.max_source_len or int(info.get("max_source_len", 512))
    settings = settings_from_args(args, int(info.get("max_target_len", 64)))
    predictor = Predictor(loaded.cfg, loaded.params, loaded.tokenizer, max_source_len=max_source,
                          batch_size=args.batch_size, continuation="objective" not in info)
    return predictor, settings


def read_texts(path: str | None, what: str = "input") -> list[str]:
    """The non-blank lines of `path` (standard input when None), each without its line end; a file that is
    missing or not UTF-8 is a UserError."""
    import sys
    from pathlib import Path

    from t5pegasus.errors import UserError

    if path is None:
        return [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def open_encoder(args: argparse.Namespace) -> tuple[Any, Any]:
    """(LoadedModel, SentenceEncoder) for --model (printing on stderr why it may not be a SimBERT)."""
    import sys

    from t5pegasus.convert.model_folder import load_model
    from t5pegasus.finetune.similar import SentenceEncoder, simbert_note

    loaded = load_model(args.model, ema=args.ema, tokenizer=args.tokenizer, model_kind=args.model_kind)
    note = simbert_note(loaded.cfg)
    if note:
        print(f"note: {note}", file=sys.stderr)
    max_len = args.max_source_len or loaded.info.get("max_source_len")
    encoder = SentenceEncoder(loaded.cfg, loaded.params, loaded.tokenizer, max_len=max_len,
                              batch_size=args.batch_size)
    return loaded, encoder
