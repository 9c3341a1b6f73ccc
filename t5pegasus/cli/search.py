"""`t5pegasus search --model M --corpus FILE`: each query's nearest corpus sentences by the cosine of their
sentence vectors (SimBERT retrieval).

Queries: `--input FILE` or standard input, one a line. The corpus is one sentence a line; its vectors are
computed here, or read from `--corpus-vectors` (what `t5pegasus encode` wrote for the same file). Exact search
with numpy; with FAISS installed (`pip install faiss-cpu`), corpora of 100,000 sentences or more use its exact
inner-product index (`--backend` forces one). For each query: the query, then `score<TAB>line<TAB>sentence`
lines best first (line = the corpus line number), then a blank line; `--jsonl` prints one JSON object a query.
"""

from __future__ import annotations

import argparse

from t5pegasus.cli.options import add_model_args


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    parser.add_argument("--corpus", required=True, metavar="FILE", help="the sentences to search, one a line")
    parser.add_argument("--corpus-vectors", metavar="FILE.npy", help="the corpus vectors (`t5pegasus encode`)")
    parser.add_argument("--input", metavar="FILE", help="queries, one a line (default: standard input)")
    parser.add_argument("-k", "--top", type=int, default=5, help="results per query (5)")
    parser.add_argument("--backend", choices=("auto", "numpy", "faiss"), default="auto",
                        help="auto: FAISS for corpora of 100,000+ sentences when installed, else numpy (auto)")
    parser.add_argument("--jsonl", action="store_true", help='one JSON line a query: {"query", "results"}')


def _corpus(path: str) -> list[tuple[int, str]]:
    """(line number, sentence) of the non-blank corpus lines."""
    from pathlib import Path

    from t5pegasus.errors import UserError

    if not Path(path).is_file():
        raise UserError(f"corpus file {path} does not exist")
    lines = Path(path).read_text(encoding="utf-8-sig").split("\n")
    return [(i, line.rstrip("\r")) for i, line in enumerate(lines, 1) if line.strip()]


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from t5pegasus.cli.options import open_encoder, read_texts
    from t5pegasus.errors import UserError
    from t5pegasus.finetune.similar import nearest, search_backend

    if args.top < 1:
        raise UserError("--top must be at least 1")
    corpus = _corpus(args.corpus)
    if not corpus:
        raise UserError(f"{args.corpus} holds no sentences")
    search_backend(args.backend, len(corpus))  # a missing FAISS stops before the model loads
    queries = read_texts(args.input, "query")
    _, encoder = open_encoder(args)
    if args.corpus_vectors:
        try:
            vectors = np.load(args.corpus_vectors)
        except (OSError, ValueError) as e:
            raise UserError(f"{args.corpus_vectors}: not a .npy array ({e})") from None
        if vectors.shape != (len(corpus), encoder.dim):
            raise UserError(f"{args.corpus_vectors} holds {vectors.shape}, but {args.corpus} has {len(corpus)} "
                            f"sentences of {encoder.dim}-dimensional vectors; encode the same corpus")
    else:
        vectors = encoder([text for _, text in corpus])
    if not queries:
        return 0
    indices, scores = nearest(encoder(queries), vectors, args.top, args.backend)
    for query, row, row_scores in zip(queries, indices, scores, strict=True):
        hits = [(corpus[i][0], corpus[i][1], float(s)) for i, s in zip(row, row_scores, strict=True)]
        if args.jsonl:
            print(json.dumps({"query": query, "results": [{"line": n, "text": t, "score": round(s, 6)}
                                                          for n, t, s in hits]}, ensure_ascii=False))
        else:
            print(query)
            for n, t, s in hits:
                print(f"{s:.4f}\t{n}\t{t}")
            print()
    return 0
