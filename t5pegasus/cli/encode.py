"""`t5pegasus encode --model M FILE -o vectors.npy`: the sentence vector of every non-blank line of FILE.

The vector is SimBERT's: the pooled [CLS] output of `[CLS] line [SEP]` (say `--model-kind simbert` for a
released SimBERT, whose folder reads as plain BERT). Row i of the float32 [lines, hidden] array is line i;
`--normalize` scales each row to unit length (cosine = dot product).
"""

from __future__ import annotations

import argparse

from t5pegasus.cli.options import add_model_args


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    parser.add_argument("input", metavar="FILE", help="one sentence per line (blank lines are skipped)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.npy", help="where to write the vectors")
    parser.add_argument("--normalize", action="store_true", help="unit-length rows")


def run(args: argparse.Namespace) -> int:
    import io

    import numpy as np

    from t5pegasus.cli.options import open_encoder, read_texts
    from t5pegasus.errors import UserError
    from t5pegasus.fileio import write_bytes
    from t5pegasus.finetune.similar import normalize

    texts = read_texts(args.input)
    if not texts:
        raise UserError(f"{args.input} holds no sentences")
    _, encoder = open_encoder(args)
    vectors = encoder(texts)
    if args.normalize:
        vectors = normalize(vectors)
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    write_bytes(args.output, buffer.getvalue())
    print(f"wrote {len(texts)} vectors of {vectors.shape[1]} dimensions to {args.output}")
    return 0
