"""The accelerator bench: t5-pegasus-base train step (bfloat16 compute, float32 weights, AdamW) and decoding on a
GPU or TPU, against HF transformers PyTorch on the same chip when torch sees it. On CPU it runs a smoke size
(the `tiny` preset) so the script is known to work before a machine with an accelerator is at hand.

    python bench/accelerator.py [--batch 32] [--source 512] [--target 128] [--new 64] [--steps 10]

MFU is the model's FLOPs per step (3x the forward pass, counted by XLA) over the step time and the chip's nominal
dense bfloat16 peak (`PEAKS`; on CPU: the float32 matmul peak measured here). The HF reference is an
`MT5ForConditionalGeneration` of the same sizes (it has no T5 PEGASUS cross-attention bias, so it does a little
less work) trained under `torch.autocast(bfloat16)`, decoding with its weights in bfloat16. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

# Nominal dense bfloat16 peak FLOP/s per chip, by the start of jax's `device_kind` (vendor data sheets).
PEAKS = {
    "NVIDIA H200": 989e12, "NVIDIA H100": 989e12, "NVIDIA GH200": 989e12, "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12, "NVIDIA A10": 125e12, "TPU v6": 918e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12,
    "TPU v5": 459e12, "TPU v4": 275e12,
}  # fmt: skip
FULL = dict(preset="t5-pegasus-base", batch=32, source=512, target=128, new=64, steps=10)
SMOKE = dict(preset="tiny", batch=2, source=32, target=8, new=8, steps=3)


def nominal_peak(device: Any) -> float | None:
    kind = device.device_kind
    return next((v for k, v in sorted(PEAKS.items(), key=lambda kv: -len(kv[0])) if kind.startswith(k)), None)


def timed(step: Callable[[], None], steps: int, warmup: int = 2) -> float:
    """Median seconds of `step` (which blocks until done) after `warmup` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def batch_of(vocab: int, batch: int, source: int, target: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    lo = min(200, vocab // 2)
    return {"encoder_ids": rng.integers(lo, vocab, (batch, source)).astype(np.int32),
            "encoder_mask": np.ones((batch, source), np.int32),
            "decoder_ids": rng.integers(lo, vocab, (batch, target)).astype(np.int32),
            "targets": rng.integers(lo, vocab, (batch, target)).astype(np.int32),
            "weights": np.ones((batch, target), np.int32)}


def ours_train(cfg: Any, batch: dict[str, np.ndarray]) -> tuple[Callable[[], None], float]:
    """(one jitted, donated train step that blocks until done; model FLOPs per step)."""
    import flax.linen as nn

    from t5pegasus.training import mesh as meshlib
    from t5pegasus.training.metrics import step_flops
    from t5pegasus.training.objectives import make_objective
    from t5pegasus.training.optim import OptimConfig, make_optimizer
    from t5pegasus.training.state import init_state, state_shardings
    from t5pegasus.training.step import jit_train_step, make_train_step

    obj = make_objective("seq2seq", cfg)
    tx, schedule = make_optimizer(OptimConfig(learning_rate=1e-4, schedule="constant", clip=1.0))
    mesh, rules = meshlib.make_mesh(), meshlib.rules_for("data")
    lengths = {"source": batch["encoder_ids"].shape[1], "target": batch["decoder_ids"].shape[1]}
    init = lambda k: obj.init(k, obj.dummy_batch(1, lengths))  # noqa: E731
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract, shardings = state_shardings(init, tx, 0.0, mesh, rules)
        holder = {"state": init_state(init, tx, 0.0, 0, shardings)}
        bsh = meshlib.batch_sharding(mesh, rules)
        step = jit_train_step(make_train_step(obj, tx, schedule), shardings, bsh)
        device_batch = jax.device_put(batch, bsh)
        flops = 3.0 * step_flops(lambda p, x: obj.loss(p, x, deterministic=True).loss, abstract.params,
                                 {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()})

    def run() -> None:
        holder["state"], metrics = step(holder["state"], device_batch)
        jax.block_until_ready(metrics)

    return run, flops


def ours_generate(cfg: Any, source: np.ndarray, new: int, beams: int) -> Callable[[], None]:
    import t5pegasus as tp

    model = tp.models.T5(cfg)
    x = jax.numpy.ones((1, 8), jax.numpy.int32)
    params = jax.jit(lambda k: tp.models.unbox(model.init(k, x, x)["params"]))(jax.random.key(0))
    settings = tp.decoding.Settings(max_new_tokens=new, min_new_tokens=new, num_beams=beams)
    adapter = tp.decoding.T5Decoding(cfg)
    return lambda: jax.block_until_ready(tp.decoding.generate(adapter, params, {"source_ids": source}, settings))


def hf_reference(cfg: Any, batch: dict[str, np.ndarray], new: int) -> dict[str, Callable[[], None]] | None:
    """HF MT5 of the same sizes on torch's accelerator (CUDA), or on CPU at the smoke size; None without torch."""
    try:
        import torch
        from transformers import MT5Config, MT5ForConditionalGeneration
    except ImportError:
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and jax.default_backend() != "cpu":
        return None  # the chip is a TPU: torch cannot run there
    torch.manual_seed(0)
    hf_cfg = MT5Config(vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_ff=cfg.d_ff, num_heads=cfg.num_heads,
                       d_kv=cfg.d_kv, num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
                       feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
                       decoder_start_token_id=cfg.decoder_start_token_id, pad_token_id=cfg.pad_token_id,
                       eos_token_id=cfg.eos_token_id)
    model = MT5ForConditionalGeneration(hf_cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    t = {k: torch.as_tensor(v, dtype=torch.long, device=device) for k, v in batch.items()}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(input_ids=t["encoder_ids"], attention_mask=t["encoder_mask"],
                        decoder_input_ids=t["decoder_ids"], labels=t["targets"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()

    infer = MT5ForConditionalGeneration(hf_cfg).to(device, dtype=torch.bfloat16).eval()

    def generate(beams: int) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                infer.generate(input_ids=t["encoder_ids"], attention_mask=t["encoder_mask"], max_new_tokens=new,
                               min_new_tokens=new, num_beams=beams, do_sample=False, early_stopping=beams > 1)
            sync()

        return run

    return {"train": train, "greedy": generate(1), "beam4": generate(4),
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__}


def main() -> None:
    import t5pegasus as tp
    from t5pegasus.host_memory import retain_freed_memory
    from t5pegasus.training.metrics import measure_matmul_peak

    retain_freed_memory()
    device = jax.devices()[0]
    on_chip = device.platform in ("gpu", "tpu")
    sizes = dict(FULL if on_chip else SMOKE)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in sizes.items():
        parser.add_argument(f"--{name}", type=type(value), default=value)
    args = parser.parse_args()
    cfg = tp.T5Config.preset(args.preset, dtype="bfloat16", dropout_rate=0.0)
    peak = nominal_peak(device) if on_chip else None
    peak_kind = "nominal bf16" if peak else "measured f32 matmul"
    if peak is None:
        peak = measure_matmul_peak("float32")
    batch = batch_of(cfg.vocab_size, args.batch, args.source, args.target)
    tokens = args.batch * (args.source + args.target)
    train, flops = ours_train(cfg, batch)
    ours = {"train_tokens_s": tokens / timed(train, args.steps)}
    mfu = flops * ours["train_tokens_s"] / tokens / peak
    for name, beams in (("greedy", 1), ("beam4", 4)):
        run = ours_generate(cfg, batch["encoder_ids"], args.new, beams)
        ours[f"{name}_new_tokens_s"] = args.batch * args.new / timed(run, max(2, args.steps // 3), warmup=1)
    ref_fns = hf_reference(cfg, batch, args.new)
    reference: dict[str, float] = {}
    if ref_fns is not None:
        reference["train_tokens_s"] = tokens / timed(ref_fns["train"], args.steps)
        for name in ("greedy", "beam4"):
            reference[f"{name}_new_tokens_s"] = args.batch * args.new / timed(ref_fns[name], max(2, args.steps // 3),
                                                                              warmup=1)
    ratio = {k: round(ours[k] / reference[k], 3) for k in reference}
    for k, v in ours.items():
        print(f"{k}: ours {v:,.1f}" + (f", HF {reference[k]:,.1f}, ratio {ratio[k]:.2f}" if k in reference else ""))
    print(f"train step MFU {100 * mfu:.1f}% of {peak / 1e12:.1f} TFLOP/s ({peak_kind})")
    if not on_chip:
        print("smoke run on CPU: the sizes are too small for the figures to mean anything (bench/train_step.py and "
              "bench/generate.py are the CPU benches)")
    print(json.dumps({
        "bench": "accelerator", "unit": "tokens/s", "ours": {k: round(v, 1) for k, v in ours.items()},
        "reference": {k: round(v, 1) for k, v in reference.items()}, "ratio": ratio, "peak_fraction": round(mfu, 4),
        "machine": f"{device.platform} ({device.device_kind}) x {jax.device_count()}, jax {jax.__version__}, "
                   f"{platform.processor() or platform.machine()} host",
        "config": {**vars(args), "dtype": "bfloat16 compute, float32 weights", "optimizer": "AdamW, clip 1.0",
                   "peak_tflops": round(peak / 1e12, 2), "peak_kind": peak_kind,
                   "model_gflop_per_step": round(flops / 1e9, 2),
                   "reference": None if ref_fns is None else f"HF MT5 same sizes, torch {ref_fns['torch']} on "
                                                             f"{ref_fns['device']}, autocast bf16 / bf16 weights",
                   "smoke": not on_chip},
    }))


if __name__ == "__main__":
    main()
