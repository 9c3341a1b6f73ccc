"""`t5pegasus finetune --init DIR --train F --dev F`: supervised fine-tuning with the best model kept.

Rerunning the same command resumes from the latest checkpoint (add `--steps N` to train longer).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from t5pegasus.cli.options import add_decoding_args, add_model_kind_arg, add_tokenizer_kind_arg, settings_from_args
from t5pegasus.finetune.metrics import SELECTION


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--init", required=True, metavar="DIR",
                        help="model to start from: a training run (latest checkpoint), a fine-tuned model, a HF "
                             "transformers folder (t5 / mt5 / gpt2 / bert) or a TF checkpoint folder such as the T5 "
                             "PEGASUS release")
    parser.add_argument("--train", required=True, metavar="FILE",
                        help='training pairs: JSONL {"src": ..., "tgt": ...} or TSV title<TAB>content; for '
                             '--objective simbert JSONL groups {"text": ..., "synonyms": [...]}; a "label" per '
                             'JSONL line (and {"text", "label"} lines for --objective lm) trains a BERT to '
                             'generate under a condition label (docs/conditional.md)')
    parser.add_argument("--dev", required=True, metavar="FILE", help="dev pairs (same formats), scored at each eval")
    parser.add_argument("--output", metavar="DIR", help="run folder (default: runs/finetune-<init folder name>)")
    parser.add_argument("--objective", choices=("seq2seq", "lm", "unilm", "simbert"),
                        help="seq2seq (T5), lm (GPT: prompt + target, loss on the target), unilm (BERT) or "
                             "simbert (BERT: UniLM + in-batch similarity of sentence vectors; dev scored by "
                             "generating each group's first synonym); default from the model family")
    add_model_kind_arg(parser, "the --init model")
    parser.add_argument("--ema", action="store_true", help="start from the init run's EMA weights")
    parser.add_argument("--tokenizer", metavar="FILE", help="tokenizer file (default: the init folder's own)")
    add_tokenizer_kind_arg(parser)
    parser.add_argument("--steps", type=int, default=1000, help="training steps (1000)")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch size (16)")
    parser.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate (2e-4)")
    parser.add_argument("--warmup", type=int, default=0, help="linear warmup steps (0)")
    parser.add_argument("--max-source-len", type=int, help="source tokens (T5: 512; GPT/BERT: fit the positions)")
    parser.add_argument("--max-target-len", type=int, help="target tokens (T5: 128; GPT/BERT: a quarter of the "
                                                           "positions, at most 128)")
    parser.add_argument("--eval-every", type=int, default=200, help="steps between dev evaluations and "
                                                                    "checkpoints (200)")
    parser.add_argument("--eval-limit", type=int, default=0, help="generate on the first N dev pairs (0 = all)")
    parser.add_argument("--eval-batch-size", type=int, help="dev inputs decoded together (default: --batch-size)")
    parser.add_argument("--metric", choices=SELECTION, default="rouge-l",
                        help="dev metric that picks the best model (rouge-l; loss: the dev loss, lowest wins, "
                             "for a language model that generates from nothing)")
    parser.add_argument("--seed", type=int, default=0, help="data order, dropout and dev sampling seed (0)")
    add_decoding_args(parser, max_length_help="default: --max-target-len", seed=False)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="run config overrides, e.g. optim.ema=0.999 eval.use_ema=true model.dropout_rate=0 "
                             "mesh.rules=fsdp (see docs/training.md)")


def _check(args: argparse.Namespace) -> None:
    from t5pegasus.errors import UserError

    for name in ("steps", "batch_size", "eval_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("max_source_len", "max_target_len"):
        value = getattr(args, name)
        if value is not None and value < 3:
            raise UserError(f"--{name.replace('_', '-')} must be at least 3")
    if args.eval_limit < 0:
        raise UserError("--eval-limit must be 0 (all dev pairs) or more")
    if args.lr <= 0:
        raise UserError("--lr must be positive")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from t5pegasus.finetune.run import FinetuneSpec, finetune

    _check(args)
    output = args.output or str(Path("runs") / f"finetune-{Path(args.init).absolute().name}")
    # the real default length (--max-target-len) is known once the model is loaded
    settings = settings_from_args(args, max(1, args.min_length))
    spec = FinetuneSpec(
        init=args.init, train=args.train, dev=args.dev, output=output, objective=args.objective,
        model_kind=args.model_kind, ema=args.ema, tokenizer=args.tokenizer, tokenizer_kind=args.tokenizer_kind,
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
        warmup_steps=args.warmup, max_source_len=args.max_source_len, max_target_len=args.max_target_len,
        eval_every=args.eval_every, eval_limit=args.eval_limit, eval_batch_size=args.eval_batch_size,
        metric=args.metric, settings=settings, max_new_tokens=args.max_length, seed=args.seed,
        overrides=tuple(args.overrides),
    )  # fmt: skip
    result = finetune(spec)
    import jax

    run_result = result.run
    code = run_result.exit_code
    if jax.process_index() != 0:
        return code  # every process stops for the same agreed reason, so all exit alike
    lines = [f"{'stopped by ' + run_result.interrupted if run_result.interrupted else 'finished'}: step "
             f"{run_result.final_step} of {args.steps}; run folder {result.run_dir}"]
    if result.best is not None:
        best = result.best
        shown = " ".join(f"{k}={v:.2f}" for k, v in best["metrics"].items())
        model = shlex.quote(str(result.best_dir))
        lines += [
            f"  best model:  {result.best_dir} (step {best['step']}, {best['metric']} {best['value']:.2f}; {shown})",
            f"  generate:    t5pegasus generate --model {model}{_condition_arg(result.best_dir)} --input FILE   "
            "(or type lines on stdin)",
            f"  evaluate:    t5pegasus evaluate --model {model} --data {shlex.quote(args.dev)}",
            f"  export:      t5pegasus convert {model} OUT_DIR",
        ]
    else:
        lines.append("  no dev evaluation ran yet, so there is no best model; train at least --eval-every steps")
    lines.append("  resume:      rerun the same command (add --steps N to train longer)")
    print("\n".join(lines))
    return code


def _condition_arg(best_dir: Path) -> str:
    """` --condition LABEL (one of …)` for a model that generates under a condition label, else ""."""
    from t5pegasus.training.run_folder import RunFolder

    cfg = RunFolder(best_dir).model_config()
    rows = getattr(cfg, "num_conditions", 0)
    if not rows:
        return ""
    names = cfg.condition_labels or tuple(str(i) for i in range(rows))
    return f" --condition LABEL (one of: {', '.join(names)})"
