"""One-off check: a T5 exported by `t5pegasus convert --to tf` loads through HF transformers 4.x's TF-checkpoint
loader (`load_tf_weights_in_t5`) with nothing left over, and its logits equal ours.

transformers 5 removed the TF loaders, so this cannot run in the test suite. It needs a second Python with
transformers<5, torch and tensorflow-cpu, e.g.

    python -m venv /tmp/venv4
    /tmp/venv4/bin/pip install /opt/wheels/torch-*+cpu-*.whl "transformers<5" tensorflow-cpu
    python scripts/check_tf_export_hf4.py --hf4-python /tmp/venv4/bin/python

The script runs in our environment (export through the CLI, our logits), then calls itself under --hf4-python
with `--side hf4` (build T5ForConditionalGeneration, fill every parameter with NaN, load the checkpoint, log what
the loader skipped or left, compute logits). It prints one JSON line per case and exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = {
    # name: (our T5Config overrides, --t5-norm)
    "t5-1.0 tied relu, layer_norm": (dict(feed_forward="relu", tie_word_embeddings=True), "layer_norm"),
    "mt5 untied gated-gelu, rms_norm": (dict(feed_forward="gated-gelu", tie_word_embeddings=False), "rms_norm"),
    "t5-pegasus, rms_norm": (dict(feed_forward="gated-gelu-erf", tie_word_embeddings=False, scale_logits=True,
                                  cross_attention_bias=True), "rms_norm"),
    "t5-pegasus, layer_norm": (dict(feed_forward="gated-gelu-erf", tie_word_embeddings=False, scale_logits=True,
                                    cross_attention_bias=True), "layer_norm"),
}
SIZES = dict(vocab_size=120, d_model=32, d_ff=48, num_heads=4, d_kv=8, num_encoder_layers=2, num_decoder_layers=3,
             relative_buckets=8, relative_max_distance=20, dropout_rate=0.0)


def hf4_side(tf_dir: str, hf_config: str, batch: str, out: str) -> None:
    """Runs under transformers 4.x: load the TF checkpoint into a NaN-filled model and compute logits."""
    import numpy as np
    import torch
    import transformers
    from transformers.models.t5 import modeling_t5

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger(modeling_t5.__name__)
    logger.setLevel(logging.INFO)
    logger.addHandler(Keep())
    config = transformers.T5Config(**json.loads(Path(hf_config).read_text()))
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    prefix = str(Path(tf_dir) / "model.ckpt")
    modeling_t5.load_tf_weights_in_t5(model, config, prefix)
    skipped = [m.removeprefix("Skipping ") for m in records if m.startswith("Skipping")]
    left_line = [m for m in records if m.startswith("Weights not copied to PyTorch model:")]
    left = left_line[0].split(":", 1)[1].strip().rstrip(".") if left_line else "<no report>"
    unset = [n for n, p in model.named_parameters() if torch.isnan(p).any()]
    data = np.load(batch)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(data["enc"]), attention_mask=torch.tensor(data["enc"] != 0),
                       decoder_input_ids=torch.tensor(data["dec"])).logits.numpy()
    np.save(out, logits)
    print(json.dumps({"transformers": transformers.__version__, "skipped": skipped, "not_copied": left,
                      "params_not_set": unset}))


def our_side(hf4_python: str) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import t5pegasus as tp
    from t5pegasus.cli import main
    from t5pegasus.convert import t5_hf
    from t5pegasus.convert.tf import tf_names

    failures = 0
    rng = np.random.default_rng(0)
    enc = rng.integers(3, SIZES["vocab_size"], (2, 11))
    enc[1, 7:] = 0
    dec = rng.integers(3, SIZES["vocab_size"], (2, 9))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "batch.npz", enc=enc, dec=dec)
        for i, (name, (switches, norm)) in enumerate(CASES.items()):
            cfg = tp.T5Config(**SIZES, **switches)
            ids = jnp.ones((1, 4), jnp.int32)
            params = tp.models.unbox(tp.models.T5(cfg).init(jax.random.PRNGKey(i), ids, ids)["params"])
            params = jax.tree.map(lambda x: x + 0.3 * rng.normal(size=x.shape).astype(np.float32), params)
            # Through the CLI: our exact HF export -> TF checkpoint (hf -> tf keeps every switch and the exact head).
            tp.convert.save_hf(cfg, params, tmp / f"hf{i}", allow_lossy=True, report=lambda _: None)
            assert main(["convert", str(tmp / f"hf{i}"), str(tmp / f"tf{i}"), "--to", "tf", "--t5-norm", norm]) == 0
            ours = np.asarray(tp.models.T5(cfg).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec)))
            hf_cfg = t5_hf.config_to_hf(cfg)
            hf_cfg["tie_word_embeddings"] = cfg.tie_word_embeddings  # HF 4.x T5: tied <=> scaled, lm_head shared
            for key in ("scale_decoder_outputs", "model_type", "architectures"):
                hf_cfg.pop(key, None)
            (tmp / f"hf4_config{i}.json").write_text(json.dumps(hf_cfg))
            run = subprocess.run([hf4_python, __file__, "--side", "hf4", str(tmp / f"tf{i}"),
                                  str(tmp / f"hf4_config{i}.json"), str(tmp / "batch.npz"), str(tmp / f"hf4_{i}.npy")],
                                 capture_output=True, text=True)
            if run.returncode:
                print(run.stderr[-3000:], file=sys.stderr)
                return 1
            report = json.loads(run.stdout.strip().splitlines()[-1])
            theirs = np.load(tmp / f"hf4_{i}.npy")
            # HF has no cross-attention bias and scales only tied heads: compare T5 PEGASUS with the bias off and
            # the untied head's d_model**-0.5 applied to HF's logits (both exact rewrites of the same weights).
            if cfg.cross_attention_bias:
                reference = np.asarray(tp.models.T5(cfg.replace(cross_attention_bias=False)).apply(
                    {"params": params}, jnp.asarray(enc), jnp.asarray(dec)))
            else:
                reference = ours
            if cfg.logits_scaled and not cfg.tie_word_embeddings:
                theirs = theirs * np.float32(cfg.d_model**-0.5)
            rel = float(np.abs(theirs - reference).max() / np.abs(reference).max())
            ok = not report["skipped"] and report["not_copied"] == "" and not report["params_not_set"] and rel < 1e-4
            failures += not ok
            print(json.dumps({"case": name, "ok": ok, "max_rel_logit_diff": rel, "tensors": len(tf_names(cfg, norm)),
                              **report}))
    return 1 if failures else 0


def main_() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("ours", "hf4"), default="ours")
    parser.add_argument("--hf4-python", default="/tmp/venv4/bin/python")
    parser.add_argument("args", nargs="*")
    args = parser.parse_args()
    if args.side == "hf4":
        hf4_side(*args.args)
        return 0
    return our_side(args.hf4_python)


if __name__ == "__main__":
    sys.exit(main_())
