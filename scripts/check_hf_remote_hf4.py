"""One-off check: the remote code of a T5 PEGASUS HF export (`modeling_t5pegasus.py`, `tokenization_t5pegasus.py`)
also computes what we compute under HF transformers 4.x (the test suite runs transformers 5).

It needs a second Python with transformers<5 and torch, e.g. (reusing this environment's torch)

    python -m venv --system-site-packages /tmp/venv4
    /tmp/venv4/bin/pip install "transformers<5"
    python scripts/check_hf_remote_hf4.py --hf4-python /tmp/venv4/bin/python

The script runs in our environment (export a random T5 PEGASUS with a small vocab.txt; our logits on a padded
batch and on a long one, our greedy and beam tokens, our tokenizer ids and decoded text), then calls itself
under --hf4-python with `--side hf4`, which loads the folder with `trust_remote_code=True` and compares. It
prints one JSON line per check and exits 1 if any fails.

Seen passing: transformers 4.57.6, and 4.44.2 (T5 still on tuple caches: positions from `query_length`) except
beam search with early_stopping=True, where 4.44's plain MT5 (no remote code) also differs from transformers
5's: HF changed its beam search, the remote code is not involved.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CLS, SEP, PAD = 101, 102, 0
VOCAB = ["中国", "人民", "北京", "我们", "经济", "发展", "hello", "wor", "##ld", "年", "，", "。"] + list(
    "中国人民北京我们的是在经济发展有和了天安门爱喜欢新华社电日月")
TEXTS = ["我爱北京天安门", "中国人民喜欢经济发展。", "Hello, WORLD! héllo worldx", "新华社北京１月１日电（记者）"]
BEAMS = [dict(num_beams=3, num_return_sequences=3, early_stopping=True, length_penalty=1.0, max_new_tokens=12),
         dict(num_beams=4, num_return_sequences=2, early_stopping=False, length_penalty=0.6, max_new_tokens=10)]
GREEDY = dict(num_beams=1, max_new_tokens=14)


def our_side(folder: Path) -> dict:
    """Export and our reference results (JSON-able)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import t5pegasus as tp
    from t5pegasus.text.vocab import BERT_HEAD
    from t5pegasus.text.wordpiece import BertJiebaTokenizer

    vocab = list(BERT_HEAD) + list(dict.fromkeys(VOCAB))
    (folder.parent / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    cfg = tp.T5Config.preset("tiny", vocab_size=len(vocab), feed_forward="gated-gelu-erf", tie_word_embeddings=False,
                             scale_logits=True, cross_attention_bias=True, decoder_start_token_id=CLS,
                             eos_token_id=SEP, unk_token_id=100, relative_buckets=8, relative_max_distance=20)
    ids = jnp.ones((1, 6), jnp.int32)
    params = tp.models.unbox(tp.models.T5(cfg).init(jax.random.PRNGKey(7), ids, ids)["params"])
    rng = np.random.default_rng(8)
    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + rng.normal(size=x.shape) * (
        0.3 if x.ndim == 1 else 0.5 * float(np.asarray(x).std())), x.dtype), params)
    head = np.asarray(params["decoder"]["lm_head"]["kernel"]) * 4.0  # peaky: some rows end early, some do not
    head[:, SEP] *= 1.5
    params["decoder"]["lm_head"]["kernel"] = jnp.asarray(head)
    tp.convert.save_hf(cfg, params, folder, extra_files={"vocab.txt": folder.parent / "vocab.txt"},
                       report=lambda _: None)
    src = rng.integers(103, cfg.vocab_size, (6, 9))
    src[1, 6:] = PAD
    src[4, 3:] = PAD
    long_src, long_dec = rng.integers(103, cfg.vocab_size, (2, 32)), rng.integers(103, cfg.vocab_size, (2, 16))
    dec = rng.integers(103, cfg.vocab_size, (6, 9))
    model = tp.models.T5(cfg)
    logits = [np.asarray(model.apply({"params": params}, jnp.asarray(e, jnp.int32), jnp.asarray(d, jnp.int32)))
              for e, d in ((src, dec), (long_src, long_dec))]
    adapter = tp.decoding.T5Decoding(cfg)
    runs = []
    for kw in [GREEDY] + BEAMS:
        ours = {k: v for k, v in kw.items() if not (k == "num_beams" and v == 1)}
        out = tp.decoding.generate(adapter, params, {"source_ids": src}, **ours)
        n = kw.get("num_return_sequences", 1)
        runs.append({"kw": kw, "tokens": np.asarray(out.tokens).reshape(len(src) * n, -1).tolist(),
                     "lengths": np.asarray(out.lengths).reshape(-1).tolist()})
    tok = BertJiebaTokenizer(folder.parent / "vocab.txt")
    return {"batches": [[src.tolist(), dec.tolist()], [long_src.tolist(), long_dec.tolist()]],
            "logits": [x.tolist() for x in logits], "runs": runs,
            "texts": {t: tok.add_special(tok.encode(t)) for t in TEXTS},
            "decoded": {t: tok.decode(tok.encode(t)) for t in TEXTS}}


def hf4_side(folder: str, reference: str) -> int:
    """Runs under transformers 4.x: load with remote code, compare with `reference`; print a JSON line each."""
    import numpy as np
    import torch
    import transformers

    ref = json.loads(Path(reference).read_text())
    failed = 0

    def say(check: str, ok: bool, **what) -> None:
        nonlocal failed
        failed += not ok
        print(json.dumps({"transformers": transformers.__version__, "check": check, "ok": bool(ok), **what}))

    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
    say("remote class", type(model).__name__ == "T5PegasusForConditionalGeneration", cls=type(model).__name__)
    for (enc, dec), want in zip(ref["batches"], ref["logits"], strict=True):
        enc, dec, want = np.array(enc), np.array(dec), np.array(want)
        with torch.no_grad():
            got = model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc != PAD),
                        decoder_input_ids=torch.tensor(dec)).logits.numpy()
        err = float(np.abs(got - want).max() / np.abs(want).max())
        say(f"logits {enc.shape}", err < 1e-4, rel_err=err)
    src = np.array(ref["batches"][0][0])
    for run in ref["runs"]:
        out = model.generate(input_ids=torch.tensor(src), attention_mask=torch.tensor(src != PAD), do_sample=False,
                             **run["kw"]).numpy()[:, 1:]
        same = True
        for mine, n, theirs in zip(run["tokens"], run["lengths"], out, strict=True):
            ends = np.flatnonzero(theirs == SEP)
            want = theirs[:ends[0] + 1] if len(ends) else theirs
            same &= n == len(want) and list(mine[:n]) == want.tolist()
        say(f"generate {run['kw']}", same)
    tok = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    for text, want in ref["texts"].items():
        got = tok(text)["input_ids"]
        say(f"tokenizer {text!r}", got == want, got=got, want=want)
        decoded = tok.decode(got, skip_special_tokens=True)
        say(f"decode {text!r}", decoded == ref["decoded"][text], got=decoded, want=ref["decoded"][text])
    plain = transformers.AutoTokenizer.from_pretrained(folder)
    say("plain tokenizer loads", type(plain).__name__.startswith("BertTokenizer"), cls=type(plain).__name__)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hf4-python", help="a Python with transformers<5 and torch")
    parser.add_argument("--side", choices=("ours", "hf4"), default="ours")
    parser.add_argument("--folder")
    parser.add_argument("--reference")
    args = parser.parse_args()
    if args.side == "hf4":
        return hf4_side(args.folder, args.reference)
    if not args.hf4_python:
        parser.error("--hf4-python is required")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export" / "hf"
        folder.parent.mkdir()
        reference = Path(tmp) / "reference.json"
        reference.write_text(json.dumps(our_side(folder)))
        return subprocess.run([args.hf4_python, __file__, "--side", "hf4", "--folder", str(folder),
                               "--reference", str(reference)], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
