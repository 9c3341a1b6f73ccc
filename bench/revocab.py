"""What re-vocabularising is worth: a small T5 pretrained with a sentencepiece vocabulary, moved to a WordPiece +
jieba vocab.txt (as T5 PEGASUS started from mT5), against a random init of the same model on the same data.

1. `t5pegasus vocab peoples-daily --spm` (sentencepiece, the "mT5" vocabulary) and `t5pegasus vocab
   peoples-daily` (WordPiece + jieba, the "T5 PEGASUS" one), both of --size tokens;
2. `t5pegasus pretrain` the base model for --base-steps steps with the sentencepiece vocabulary;
3. `t5pegasus pretrain model.init=<base run> data.vocab=vocab.txt` ("revocab") and the same model from a random
   init ("random"), same seed (so the same batches), --steps steps each; and, to tell the embedding rule's share
   from the transformer body's, "body": the base run's weights with every vocabulary row drawn fresh (the rows
   a random init has); the train loss of every step and the held-out loss every 25 steps are read back from
   metrics.jsonl.

    python bench/revocab.py --out runs/bench-revocab          # about 10 minutes on 2 shared CPU cores

Prints a table and one JSON line. Rerunning reuses the vocabularies, the data cache and the base run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

POINTS = (1, 10, 25, 50, 100)  # step 1's loss is the loss of the initial weights on the first batch


def model_args(a: argparse.Namespace) -> list[str]:
    return [f"model.{k}={v}" for k, v in (
        ("family", "t5"), ("preset", "t5-pegasus-small"), ("d_model", a.d_model), ("d_ff", 2 * a.d_model),
        ("num_heads", 4), ("d_kv", a.d_model // 4), ("num_encoder_layers", a.layers),
        ("num_decoder_layers", a.layers), ("dropout_rate", 0.0))]


def common(a: argparse.Namespace, name: str, steps: int) -> list[str]:
    return [f"name={name}", f"output_dir={a.out}", "seed=0", "data.corpus=peoples-daily",
            f"data.cache_dir={a.out}/cache", "data.max_source_len=128", "data.max_target_len=32",
            f"data.batch_size={a.batch}", f"train.steps={steps}", "train.log_every=1", "checkpoint.every=1000",
            "eval.every=25", "eval.batches=4", "log.tensorboard=false", "log.progress=off",
            "optim.learning_rate=0.001", "optim.points={20: 1.0}"]


def pretrain(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "t5pegasus.cli", "pretrain", *args], check=True)
    return time.perf_counter() - start


def curves(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = {x["step"]: x["loss"] for x in lines if x["kind"] == "train"}
    held = {x["step"]: x["loss"] for x in lines if x["kind"] == "eval"}
    return train, held


def body_only(a: argparse.Namespace, base: Path, wordpiece: Path) -> None:
    """The "body" run: `model.init` of the base run, but every vocabulary row from the fresh init."""
    import numpy as np

    from t5pegasus.convert import revocab as rv
    from t5pegasus.convert.init_from import resolve_init
    from t5pegasus.training import runconfig
    from t5pegasus.training.loop import train

    values = runconfig.load_values(None, [*common(a, "body", a.steps), f"model.init={base}",
                                          f"data.vocab={wordpiece}"])
    rv.remap = lambda old, fresh, rows, axis: np.asarray(fresh)  # no row copied or averaged
    cfg, initial = resolve_init(values)
    train(cfg, initial_params=initial)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench-revocab"))
    p.add_argument("--size", type=int, default=8000, help="tokens of each vocabulary")
    p.add_argument("--base-steps", type=int, default=600)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--body-run", action="store_true", help=argparse.SUPPRESS)  # the "body" run, in a subprocess
    a = p.parse_args()
    a.out = a.out.absolute()
    a.out.mkdir(parents=True, exist_ok=True)
    spm, wordpiece = a.out / "spiece.model", a.out / "vocab.txt"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if not spm.exists():
        subprocess.run([sys.executable, "-m", "t5pegasus.cli", "vocab", "peoples-daily", "--spm", "-o", str(spm),
                        "--size", str(a.size)], check=True, env=env)
    if not wordpiece.exists():
        subprocess.run([sys.executable, "-m", "t5pegasus.cli", "vocab", "peoples-daily", "-o", str(wordpiece),
                        "--size", str(a.size)], check=True, env=env)
    base = a.out / "base-spm"
    if a.body_run:
        return body_only(a, base, wordpiece)
    times = {}
    if not (base / "checkpoints" / str(a.base_steps)).exists():
        times["base"] = pretrain([*common(a, "base-spm", a.base_steps), *model_args(a), f"data.vocab={spm}"])
    runs = {"revocab": [f"model.init={base}", f"data.vocab={wordpiece}"],
            "random": [*model_args(a), f"data.vocab={wordpiece}"]}
    for name, extra in runs.items():
        if not (a.out / name / "checkpoints" / str(a.steps)).exists():
            times[name] = pretrain([*common(a, name, a.steps), *extra])
    if not (a.out / "body" / "checkpoints" / str(a.steps)).exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--body-run"], check=True)
        times["body"] = time.perf_counter() - start
    results = {name: curves(a.out / name) for name in (*runs, "body")}
    report = json.loads((a.out / "revocab" / "revocab.json").read_text())
    print(f"\nre-vocabularised: {report['counts']} ({report['mean_pieces']:.2f} pieces per averaged token)")
    print("train loss   " + "".join(f"{'step ' + str(s):>10}" for s in POINTS) + f"{'mean 91-100':>13}")
    table = {}
    for name, (train, held) in results.items():
        points = {s: train[s] for s in POINTS if s in train}
        tail = [train[s] for s in range(a.steps - 9, a.steps + 1) if s in train]
        table[name] = {"train": points, "train_mean_last10": sum(tail) / len(tail), "held_out": held}
        mean = table[name]["train_mean_last10"]
        print(f"{name:<13}" + "".join(f"{points[s]:>10.3f}" for s in points) + f"{mean:>13.3f}")
    print("held-out     " + "".join(f"{'step ' + str(s):>10}" for s in sorted(results['random'][1])))
    for name, (_, held) in results.items():
        print(f"{name:<13}" + "".join(f"{held[s]:>10.3f}" for s in sorted(held)))
    print(json.dumps({"bench": "revocab", "machine": platform.processor() or platform.machine(), "times_s": times,
                      "config": vars(a) | {"out": str(a.out)}, "counts": report["counts"], "results": table}))


if __name__ == "__main__":
    main()
