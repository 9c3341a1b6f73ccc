"""Decoding speed: new tokens/s for greedy and beam-4 at the t5-pegasus-small shape, ours vs HF transformers.

Random weights (an HF MT5 of the t5-pegasus-small sizes, loaded into ours with `tp.convert.load_hf`, so both
sides hold the same weights), batch 8, source 256, exactly 64 new tokens (min = max, so the end token cannot
stop early), float32, same machine, same run. Also reports ours as a fraction of a roofline (`roofline_s`)
built from the measured matmul peak and memory read bandwidth. Ends with one JSON line.

    python bench/generate.py [--batch 8] [--source 256] [--new 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

import t5pegasus as tp
from t5pegasus.host_memory import describe, retain_freed_memory
from t5pegasus.training.metrics import measure_matmul_peak, step_flops

SHAPE = dict(vocab_size=50000, d_model=512, d_ff=1024, num_heads=6, d_kv=64, num_layers=8, num_decoder_layers=8,
             relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
             tie_word_embeddings=False, dropout_rate=0.0, pad_token_id=0, eos_token_id=102,
             decoder_start_token_id=101)


def hf_model(folder: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = transformers.MT5ForConditionalGeneration(transformers.MT5Config(**SHAPE)).eval()
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.05)
    model.save_pretrained(folder)
    return model


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def read_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Bytes/s of summing a large float32 array (best of `repeats`): the host memory's streaming read rate."""
    x = jnp.ones((mib << 18,), jnp.float32)
    total = jax.jit(jnp.sum)
    jax.block_until_ready(total(x))
    return x.nbytes / best_time(lambda: jax.block_until_ready(total(x)), repeats)


def roofline_s(cfg: tp.T5Config, params: dict, src: np.ndarray, new: int, beam_counts: tuple[int, ...],
               peak: float, bandwidth: float) -> dict[int, float]:
    """A lower bound on one `generate` call per beam count: the encoder's FLOPs at the matmul peak, then per
    new token the larger of (decoder weights + cross-attention memory read once, at the read bandwidth) and
    (2 FLOPs per decoder weight per row, at the peak). Attention FLOPs, the self-attention cache and the search
    are left out, so no implementation can beat it. The encoder is costed once for every beam count."""
    model = tp.models.T5(cfg)
    encode = lambda p, x: model.apply({"params": p}, x, x != 0, method=tp.models.T5.encode)
    encoder_s = step_flops(encode, params, jnp.asarray(src)) / peak
    decoder_params = sum(x.size for x in jax.tree.leaves(params["decoder"]))
    batch, source = src.shape
    memory = cfg.num_decoder_layers * 2 * batch * source * cfg.num_heads * cfg.d_kv  # cross keys + values
    read_s = 4 * (decoder_params + memory) / bandwidth
    return {k: encoder_s + new * max(read_s, 2.0 * decoder_params * batch * k / peak) for k in beam_counts}


def main() -> None:
    retain_freed_memory()  # as the `t5pegasus` command does; applies to the reference in this process too
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--source", type=int, default=256)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        hf = hf_model(folder)
        cfg, params = tp.convert.load_hf(folder)
    src = np.random.default_rng(0).integers(200, SHAPE["vocab_size"], (args.batch, args.source)).astype(np.int32)
    src_t = torch.tensor(src, dtype=torch.long)
    model = tp.decoding.T5Decoding(cfg)
    n = args.new
    modes = (("greedy", 1), ("beam4", 4))
    peak, bandwidth = measure_matmul_peak("float32"), read_bandwidth()
    floor = roofline_s(cfg, params, src, n, tuple(beams for _, beams in modes), peak, bandwidth)
    ours, reference, tokens_match, fraction = {}, {}, {}, {}
    for name, beams in modes:
        settings = tp.decoding.Settings(max_new_tokens=n, min_new_tokens=n, num_beams=beams)
        run = lambda s=settings: jax.block_until_ready(tp.decoding.generate(model, params, {"source_ids": src}, s))
        out = run()  # compile
        assert (np.asarray(out.lengths) == n).all()
        seconds = best_time(run, args.repeats)
        ours[name] = args.batch * n / seconds
        fraction[name] = floor[beams] / seconds
        hf_kw = dict(max_new_tokens=n, min_new_tokens=n, num_beams=beams, do_sample=False, early_stopping=beams > 1)
        with torch.inference_mode():
            ref = hf.generate(input_ids=src_t, attention_mask=src_t != 0, **hf_kw)
            reference[name] = args.batch * n / best_time(
                lambda kw=hf_kw: hf.generate(input_ids=src_t, attention_mask=src_t != 0, **kw),
                max(1, args.repeats - 1))
        tokens_match[name] = float((ref.numpy()[:, 1:] == np.asarray(out.tokens)[:, 0]).mean())
        print(f"{name}: ours {ours[name]:.1f} new tokens/s, HF {reference[name]:.1f}, "
              f"ratio {ours[name] / reference[name]:.2f}, same tokens {tokens_match[name]:.3f}, "
              f"{100 * fraction[name]:.0f}% of the roofline", flush=True)
    device = jax.devices()[0]
    print(json.dumps({
        "bench": "generate", "unit": "new tokens/s",
        "ours": {k: round(v, 1) for k, v in ours.items()},
        "reference": {k: round(v, 1) for k, v in reference.items()},
        "ratio": {k: round(ours[k] / reference[k], 2) for k in ours},
        "peak_fraction": {k: round(v, 3) for k, v in fraction.items()},
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, jax {jax.__version__} on {device.platform} "
                   f"({device.device_kind}), torch {torch.__version__} with {torch.get_num_threads()} threads",
        "config": {"host_malloc": describe(),
                   "shape": "t5-pegasus-small (HF mT5-compatible: no cross-attention bias)", "batch": args.batch,
                   "source": args.source, "new_tokens": n, "dtype": "float32", "reference": "transformers "
                   f"{transformers.__version__} generate", "fraction_same_tokens": tokens_match,
                   "peak_gflops": round(peak / 1e9, 1), "read_gib_s": round(bandwidth / 2**30, 1),
                   "peak_fraction": "roofline_s / measured s (see roofline_s)"},
    }))


if __name__ == "__main__":
    main()
