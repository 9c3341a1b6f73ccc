"""`t5pegasus convert SRC DST`: between a training run, HF transformers, TF checkpoints and Megatron shards.

Formats are detected from SRC (and default to `hf` for DST) unless given with --from / --to. DST is written
atomically and never replaces an existing path without --force.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from t5pegasus.cli.options import add_model_kind_arg, add_tokenizer_kind_arg
from t5pegasus.convert.detect import FORMATS, detect, model_dir, tokenizer_files
from t5pegasus.convert.model_folder import as_model_kind, folder_tokenizer_kind, read_weights
from t5pegasus.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="a training run folder, HF model folder, TF checkpoint or Megatron checkpoint")
    parser.add_argument("dst", help="the folder to write")
    parser.add_argument("--from", dest="src_format", choices=FORMATS, help="format of SRC (default: detected)")
    parser.add_argument("--to", dest="dst_format", choices=FORMATS[1:], default="hf", help="format of DST (hf)")
    parser.add_argument("--ema", action="store_true", help="export the run's averaged (EMA) weights")
    parser.add_argument("--step", type=int, help="checkpoint step of a run (default: the latest)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="dtype of the written weights (float32)")
    parser.add_argument("--allow-lossy", action="store_true",
                        help="export even what the format cannot express (non-default attention switches such "
                             "as RoPE or RealFormer to HF), and say what was dropped")
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    parser.add_argument("--tokenizer", help="tokenizer file to ship with an HF or TF export (vocab.txt or *.model); "
                                            "a run's own tokenizer is shipped by default")
    add_tokenizer_kind_arg(parser)
    add_model_kind_arg(parser, "SRC")
    parser.add_argument("--vocab", help="give the model this vocabulary (vocab.txt or sentencepiece .model): rows of "
                                        "tokens SRC's tokenizer has are kept, others are the mean of their old "
                                        "pieces' rows (docs/convert.md); shipped as DST's tokenizer")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rows --vocab draws at random (0)")
    parser.add_argument("--num-heads", type=int, help="attention heads (Megatron shards do not record it)")
    parser.add_argument("--shards", type=int, default=1, help="model-parallel ranks of a Megatron export (1)")
    parser.add_argument("--t5-norm", choices=("rms_norm", "layer_norm"),
                        help="T5 norm spelling of a TF export (default: rms_norm when gated, as T5 1.1 / mT5 / "
                             "T5 PEGASUS; layer_norm otherwise, as T5 1.0)")


def _detect(src: Path) -> str:
    try:
        return detect(src)
    except UserError as e:
        if not src.exists():
            raise
        raise UserError(f"{e}; or give the format with --from ({', '.join(FORMATS)})") from None


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    src_format = args.src_format or _detect(src)
    if src_format == args.dst_format and src_format != "megatron" and not args.vocab:
        raise UserError(f"SRC and DST are both {src_format}; nothing to convert")
    if dst.exists() and not args.force:
        raise UserError(f"{dst} exists; choose another destination or pass --force to replace it")
    extra = tokenizer_files(src, src_format, args.tokenizer) if args.dst_format in ("hf", "tf") else {}
    # the shipped tokenizer's kind, recorded in DST: as SRC records it (a Megatron CPM-LM's .model is cpm)
    folder = model_dir(src)
    kind = next((folder_tokenizer_kind(folder, path, src_format, given=args.tokenizer_kind, own=args.tokenizer is None)
                 for path in extra.values()), None)
    cfg, params = read_weights(src, src_format, step=args.step, ema=args.ema, num_heads=args.num_heads)
    cfg = as_model_kind(cfg, args.model_kind)
    if args.vocab:  # --tokenizer is then SRC's own tokenizer, the one the weights were trained with
        from t5pegasus.convert.revocab import revocab_folder

        result = revocab_folder(cfg, params, src, args.vocab, tokenizer=args.tokenizer, seed=args.seed)
        cfg, params = result.cfg, result.params
        extra = tokenizer_files(src, src_format, args.vocab) if args.dst_format in ("hf", "tf") else {}
        kind = None  # the new vocabulary's kind is its suffix's
        print(result.report.summary())
    if args.dst_format == "hf":
        from t5pegasus.convert.hf_export import save_hf

        save_hf(cfg, params, dst, allow_lossy=args.allow_lossy, overwrite=args.force, dtype=args.dtype,
                extra_files=extra, tokenizer_kind=kind)
    elif args.dst_format == "tf":
        from t5pegasus.convert.tf import save_tf

        save_tf(cfg, params, dst, overwrite=args.force, dtype=args.dtype, t5_norm=args.t5_norm, extra_files=extra,
                tokenizer_kind=kind)
    else:
        from t5pegasus.convert.megatron import save_megatron

        save_megatron(cfg, params, dst, ranks=args.shards, overwrite=args.force, dtype=args.dtype)
    print(f"wrote {dst} ({args.dst_format}, {cfg.family} model{', EMA weights' if args.ema else ''})")
    return 0
