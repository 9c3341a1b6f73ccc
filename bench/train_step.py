"""Train-step throughput at the t5-pegasus-small shape: ours (JAX, jitted, donated) vs HF transformers PyTorch.

Same machine, same run: batch 8, source 256, target 64, float32, AdamW (optax.adamw vs torch.optim.AdamW).
The two alternate in rounds (the machine's speed drifts), and the float32 matmul peak (a large jnp matmul)
is measured between rounds; MFU is against the highest of those peaks.
Ends with one JSON line (see ARCHITECTURE.md, Testing).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from t5pegasus.host_memory import describe, retain_freed_memory  # noqa: E402
from t5pegasus.xla_options import train_step_options  # noqa: E402

BATCH, SRC, TGT = 8, 256, 64
WARMUP, STEPS, ROUNDS = 2, 3, 3


def ours(batch: dict[str, np.ndarray]) -> tuple[Callable[[], None], float]:
    """(one step, blocking until done; model FLOPs per step) of our jitted sharded train step."""
    import flax.linen as nn

    import t5pegasus as tp
    from t5pegasus.training import mesh as meshlib
    from t5pegasus.training.metrics import step_flops
    from t5pegasus.training.objectives import make_objective
    from t5pegasus.training.optim import OptimConfig, make_optimizer
    from t5pegasus.training.state import init_state, state_shardings
    from t5pegasus.training.step import jit_train_step, make_train_step

    cfg = tp.T5Config.preset("t5-pegasus-small", dropout_rate=0.0)
    obj = make_objective("seq2seq", cfg)
    tx, schedule = make_optimizer(OptimConfig(learning_rate=1e-4, schedule="constant", clip=0.0))
    mesh = meshlib.make_mesh()
    rules = meshlib.rules_for("data")
    init = lambda k: obj.init(k, obj.dummy_batch(1, {"source": SRC, "target": TGT}))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract, shardings = state_shardings(init, tx, 0.0, mesh, rules)
        holder = {"state": init_state(init, tx, 0.0, 0, shardings)}
        bsh = meshlib.batch_sharding(mesh, rules)
        step = jit_train_step(make_train_step(obj, tx, schedule), shardings, bsh)
        b = jax.device_put(batch, bsh)
        flops = 3.0 * step_flops(lambda p, x: obj.loss(p, x, deterministic=True).loss, abstract.params,
                                 {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()})

    def run() -> None:
        holder["state"], metrics = step(holder["state"], b)
        jax.block_until_ready(metrics)

    return run, flops


def reference(batch: dict[str, np.ndarray]) -> Callable[[], None]:
    """One step of HF MT5ForConditionalGeneration + torch.optim.AdamW, same shape, float32."""
    import torch
    from transformers import MT5Config, MT5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = MT5Config(vocab_size=50000, d_model=512, d_ff=1024, num_heads=6, d_kv=64, num_layers=8,
                    num_decoder_layers=8, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    dropout_rate=0.0, decoder_start_token_id=101, pad_token_id=0)
    model = MT5ForConditionalGeneration(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    enc = torch.as_tensor(batch["encoder_ids"], dtype=torch.long)
    mask = torch.as_tensor(batch["encoder_mask"], dtype=torch.long)
    dec = torch.as_tensor(batch["decoder_ids"], dtype=torch.long)
    labels = torch.as_tensor(batch["targets"], dtype=torch.long)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=enc, attention_mask=mask, decoder_input_ids=dec, labels=labels)
        out.loss.backward()
        opt.step()

    return step


def timed(step: Callable[[], None], n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    retain_freed_memory()  # as the `t5pegasus` command does; applies to the reference in this process too
    from t5pegasus.training.metrics import measure_matmul_peak

    rng = np.random.default_rng(0)
    batch = {
        "encoder_ids": rng.integers(200, 50000, (BATCH, SRC)).astype(np.int32),
        "encoder_mask": np.ones((BATCH, SRC), np.int32),
        "decoder_ids": rng.integers(200, 50000, (BATCH, TGT)).astype(np.int32),
        "targets": rng.integers(200, 50000, (BATCH, TGT)).astype(np.int32),
        "weights": np.ones((BATCH, TGT), np.int32),
    }
    tokens = BATCH * (SRC + TGT)
    ours_step, flops = ours(batch)
    ref_step = reference(batch)
    for step in (ours_step, ref_step):
        timed(step, WARMUP)
    # The VM's speed drifts over minutes: alternate the two, and measure the peak in every round.
    ours_times, ref_times, peaks = [], [], []
    for _ in range(ROUNDS):
        peaks.append(measure_matmul_peak("float32", n=2048, repeats=5))
        ours_times += timed(ours_step, STEPS)
        ref_times += timed(ref_step, STEPS)
    peaks.append(measure_matmul_peak("float32", n=2048, repeats=5))
    ours_s, ref_s, peak = float(np.median(ours_times)), float(np.median(ref_times)), max(peaks)
    ours_tps, ref_tps = tokens / ours_s, tokens / ref_s
    mfu = flops / ours_s / peak
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s (highest of {len(peaks)}: "
          f"{', '.join(f'{p / 1e9:.0f}' for p in peaks)}); model {flops / 1e9:.1f} GFLOP/step")
    print(f"ours: {ours_s:.3f} s/step, {ours_tps:,.0f} tokens/s, MFU {100 * mfu:.1f}% of the highest peak")
    print(f"HF transformers (PyTorch): {ref_s:.3f} s/step, {ref_tps:,.0f} tokens/s")
    print(json.dumps({
        "bench": "train_step", "unit": "tokens/s", "ours": round(ours_tps, 1), "reference": round(ref_tps, 1),
        "ratio": round(ours_tps / ref_tps, 3), "peak_fraction": round(mfu, 3),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {jax.default_backend()}",
        "config": {"host_malloc": describe(), "compiler_options": train_step_options(),
                   "model": "t5-pegasus-small", "batch": BATCH, "source": SRC, "target": TGT, "dtype": "float32",
                   "optimizer": "AdamW", "peak_gflops": round(peak / 1e9, 1),
                   "peaks_gflops": [round(p / 1e9, 1) for p in peaks], "model_gflop_per_step": round(flops / 1e9, 1),
                   "rounds": ROUNDS, "steps_per_round": STEPS,
                   "timing": "median step of all rounds; MFU against the highest peak measured between rounds",
                   "step_times_s": {"ours": [round(t, 3) for t in ours_times],
                                    "reference": [round(t, 3) for t in ref_times]}},
    }))


if __name__ == "__main__":
    main()
