"""`t5pegasus pretrain [--config FILE|PRESET] [key=value ...]`: the pretraining job.

With no arguments it runs the embedded demo (`t5pegasus/configs/pretrain-demo.yaml`): T5 PEGASUS-style
pseudo-summary pretraining of a small model on the People's Daily corpus, on the CPU. Rerunning the same
command resumes from the latest checkpoint. `model.init=DIR` starts from a model folder's weights (HF mT5, a
run, a TF release), re-vocabularised when `data.vocab` is another vocabulary than DIR's own.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config file, or a packaged preset name "
                        "(default: the embedded T5 PEGASUS demo run)")  # fmt: skip
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="overrides of the run config with dotted keys, e.g. train.steps=200 "
                        "optim.learning_rate=3e-4 model.d_model=128 mesh.rules=fsdp; model.init=DIR starts from a "
                        "model folder's weights (with data.vocab=vocab.txt: re-vocabularised to it)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from t5pegasus.convert.init_from import resolve_init
    from t5pegasus.training import runconfig

    # model.init=DIR: the model section from that folder, its weights (re-vocabularised for data.vocab) to start
    cfg, initial_params = resolve_init(runconfig.load_values(args.config, args.overrides),
                                       with_weights=not args.print_config)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    from t5pegasus.training.loop import train

    result = train(cfg, initial_params=initial_params)
    import jax

    code = result.exit_code
    if jax.process_index() != 0:
        return code  # every process stops for the same agreed reason, so all exit alike
    command = "t5pegasus pretrain" + (f" --config {args.config}" if args.config else "")
    command += "".join(f" {o}" for o in args.overrides)
    d = result.run_dir
    last = max(result.checkpoint_steps) if result.checkpoint_steps else None
    lines = []
    if result.interrupted:
        lines.append(f"stopped by {result.interrupted} at step {result.final_step} of {cfg.train.steps}.")
    else:
        lines.append(f"finished: step {result.final_step} of {cfg.train.steps}.")
    if result.last_train:
        lines.append(f"  last train loss {result.last_train.get('loss', float('nan')):.4f}"
                     + (f", held-out loss {result.last_eval['loss']:.4f}" if result.last_eval else ""))
    lines += [
        f"  run directory:  {d}",
        f"  checkpoints:    {d / 'checkpoints'} (steps {', '.join(map(str, result.checkpoint_steps))})",
        f"  logs:           {d / 'metrics.jsonl'}; TensorBoard: tensorboard --logdir {d / 'tensorboard'}",
        f"  model config:   {d / 'model_config.json'}; tokenizer: see {d / 'tokenizer.txt'}",
        f"  resume:         {command}" + ("" if result.interrupted else "   (add train.steps=N to train longer)"),
    ]
    if last is not None:
        lines += [
            f"  export:         t5pegasus convert {d} {d}-tf --to tf   (the T5 PEGASUS release format; --to hf "
            f"for HF transformers, T5 PEGASUS loaded with trust_remote_code=True; --ema for averaged weights)",
            f"  generate:       echo '<text>' | t5pegasus generate --model {d}",
            f"  fine-tune:      t5pegasus finetune --init {d} --train TRAIN.jsonl --dev DEV.jsonl",
        ]
    print("\n".join(lines))
    return code
