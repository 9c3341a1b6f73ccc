"""Real (non-pad) tokens per second of the default demo run (t5pegasus/configs/pretrain-demo.yaml), unpacked vs
packed, in the same run.

Each variant is the demo's own `train()` loop (fewer steps, no evaluation, one checkpoint at the end), its
rate read from the train lines of metrics.jsonl (the loop's real-token count over wall time, the compiling
first step left out). The variants alternate for `--rounds` rounds (the machine's speed drifts) and the
rates are pooled per variant. `fill` is the non-pad fraction of the slots of 50 batches from the loader.
Packed rows default to source 288 / target 96 with 8 rows a step (about as many examples per step as the
demo's 16 unpacked rows): the demo's targets mostly fill their 48 tokens, so rows of its own lengths hold
one example each (see docs/training.md, Packing). Ends with one JSON line with `ratio` (packed / unpacked
real tokens/s) and `fill` (of the packed slots).

    python bench/pretrain_throughput.py [--steps 13] [--rounds 1] [--pack "{source: 288, target: 96}"]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def processor() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fill(cfg, batches: int = 50) -> dict[str, float]:
    """Non-pad fraction of the slots (source + target, or sequence) over `batches` training batches."""
    from t5pegasus.training.data import loader, prepare

    data = prepare(cfg.data, lambda text: None)
    lengths = {"max_source_len": cfg.data.max_source_len, "max_target_len": cfg.data.max_target_len,
               "max_len": cfg.data.max_len}
    it = loader(data.train, cfg.data, seed=cfg.seed, shuffle=cfg.data.shuffle, max_lengths=lengths,
                pack=cfg.data.pack_rows)
    real = slots = examples = 0.0
    for _ in range(batches):
        b = next(it)
        if "encoder_mask" in b:
            real += b["encoder_mask"].sum() + b["weights"].sum()
            slots += b["encoder_mask"].size + b["weights"].size
            examples += b["encoder_segment_ids"].max(1).sum() if "encoder_segment_ids" in b else len(b["weights"])
        else:
            real += b["weights"].sum()
            slots += b["weights"].size
            examples += b["segment_ids"].max(1).sum() if "positions" in b else len(b["weights"])
    return {"fill": float(real / slots), "examples_per_step": float(examples / batches)}


def run(overrides: list[str], out: Path, name: str) -> dict[str, float]:
    """One demo run: its timed steps, their seconds, real tokens and seconds spent waiting for data."""
    from t5pegasus.training import runconfig
    from t5pegasus.training.loop import train

    cfg = runconfig.load(None, [f"output_dir={out}", f"name={name}", *overrides])
    train(cfg)
    lines = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    total = {"steps": 0.0, "seconds": 0.0, "tokens": 0.0, "waited": 0.0}
    previous = 1  # the first window's compiling step is not timed
    for x in (x for x in lines if x["kind"] == "train"):
        if "tokens_per_s" in x:
            n = x["step"] - previous
            total["steps"] += n
            total["seconds"] += x["step_time"] * n
            total["tokens"] += x["tokens_per_s"] * x["step_time"] * n
            total["waited"] += x["data_wait"] * n
        previous = x["step"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=13)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--pack", default="{source: 288, target: 96}", help="data.pack of the packed variant")
    parser.add_argument("--packed-batch", type=int, default=8, help="data.batch_size (rows) of the packed variant")
    parser.add_argument("--cache-dir", default="runs/cache", help="data.cache_dir (the demo data is built once)")
    args = parser.parse_args()

    from t5pegasus.host_memory import retain_freed_memory
    from t5pegasus.training import runconfig

    retain_freed_memory()
    common = [f"train.steps={args.steps}", "train.log_every=4", "eval.every=0", "checkpoint.every=100000",
              "log.tensorboard=false", "log.progress=off", "log.peak_flops=1e11", f"data.cache_dir={args.cache_dir}"]
    variants = {"unpacked": common,
                "packed": [*common, f"data.pack={args.pack}", f"data.batch_size={args.packed_batch}"]}
    report: dict = {"processor": processor(), "cpus": os.cpu_count(), "steps": args.steps, "rounds": args.rounds}
    for name, overrides in variants.items():
        report[name] = {"overrides": overrides[len(common):], **fill(runconfig.load(None, overrides))}
    pooled = {name: {"steps": 0.0, "seconds": 0.0, "tokens": 0.0, "waited": 0.0} for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, overrides in variants.items():
                got = run(overrides, Path(tmp), f"{name}-{r}")
                print(f"round {r} {name}: {got['tokens'] / got['seconds']:,.0f} real tokens/s", file=sys.stderr,
                      flush=True)
                pooled[name] = {k: v + got[k] for k, v in pooled[name].items()}
    for name, t in pooled.items():
        report[name].update(tokens_per_s=t["tokens"] / t["seconds"], step_time=t["seconds"] / t["steps"],
                            data_wait=t["waited"] / t["steps"])
    report["ratio"] = report["packed"]["tokens_per_s"] / report["unpacked"]["tokens_per_s"]
    report["fill"] = report["packed"]["fill"]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
