"""SimBERT at use: sentence vectors (`SentenceEncoder`), nearest sentences by cosine (`nearest`) and similar
sentences generated then ranked by their vectors (`similar_sentences`).

A sentence's vector is the pooled [CLS] output of `[CLS] text [SEP]` (segment 0), as bert4keras' SimBERT
examples compute it: for a SimBERT (the `simbert` model kind: UniLM mask, linear pooler) the pooler's linear
output, the [CLS] state for a BERT without a pooler. Shapes are bucketed (rows: the batch size; length: the
next power of two, at most the limit), so a long file compiles the encoder once or twice.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from t5pegasus import families
from t5pegasus.config import ConfigBase
from t5pegasus.decoding import Settings
from t5pegasus.errors import UserError
from t5pegasus.finetune.predict import MIN_BUCKET, Predictor
from t5pegasus.text.base import Tokenizer

# Corpora at least this large are searched with FAISS when it is installed (`backend="auto"`).
FAISS_MIN_CORPUS = 100_000
BACKENDS = ("auto", "numpy", "faiss")


def simbert_note(cfg: ConfigBase) -> str | None:
    """Why `cfg` may not give SimBERT's sentence vectors (None when it is a SimBERT): a Google-BERT-named
    checkpoint reads as a plain BERT unless told (`--model-kind simbert`)."""
    if families.of(cfg).name != "bert":
        raise UserError(f"sentence vectors need a BERT (SimBERT) model; this is a {cfg.family} model")
    if cfg.mask == "unilm" and cfg.pooler_activation == "linear":
        return None
    return (f"this BERT reads as mask={cfg.mask!r}, pooler {cfg.pooler_activation!r}, not SimBERT's UniLM mask and "
            f"linear pooler; if it is a SimBERT (its folder cannot say so), pass --model-kind simbert")


def _bucket(n: int, limit: int) -> int:
    size = MIN_BUCKET
    while size < n:
        size *= 2
    return min(size, limit)


class SentenceEncoder:
    """Sentence vectors of texts from a BERT's params and tokenizer (texts cut to `max_len` tokens, specials
    included)."""

    def __init__(self, cfg: ConfigBase, params: Any, tokenizer: Tokenizer, *, max_len: int | None = None,
                 batch_size: int = 64) -> None:
        import jax

        from t5pegasus.models.bert import Bert
        from t5pegasus.training.simbert import sentence_vectors

        simbert_note(cfg)  # refuses a model that is no BERT
        self.max_len = min(max_len or cfg.trained_positions, cfg.position_limit or sys.maxsize)
        if self.max_len < 3:
            raise UserError("the maximum length must leave room for [CLS] text [SEP] (at least 3)")
        self.tok, self.batch_size = tokenizer, max(1, batch_size)
        model = Bert(cfg.replace(with_mlm=False))  # no vocabulary projection: only the pooled vector is read
        params = {k: v for k, v in params.items() if not k.startswith("mlm_")}

        def vectors(ids: Any, mask: Any) -> Any:
            return sentence_vectors(model.apply({"params": params}, ids, jax.numpy.zeros_like(ids), mask))

        self._vectors = jax.jit(vectors)
        self.dim = int(cfg.hidden_size)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), hidden] sentence vectors."""
        out = np.zeros((len(texts), self.dim), np.float32)
        rows = 1
        while rows < min(self.batch_size, len(texts)):  # a power of two, or the batch size: few shapes
            rows *= 2
        rows = min(rows, self.batch_size)
        for start in range(0, len(texts), rows):
            chunk = list(texts[start:start + rows])
            ids = [self.tok.add_special(x, self.max_len) for x in self.tok.encode_batch(chunk)]
            width = _bucket(max(len(x) for x in ids), self.max_len)
            batch = np.full((rows, width), self.tok.pad_id, np.int32)
            mask = np.zeros((rows, width), bool)
            for i, row in enumerate(ids):
                batch[i, :len(row)], mask[i, :len(row)] = row, True
            mask[len(ids):, 0] = True  # filler rows: one visible token, dropped below
            out[start:start + len(chunk)] = np.asarray(self._vectors(batch, mask))[:len(chunk)]
        return out


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    v = np.asarray(vectors, np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _faiss() -> Any | None:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def search_backend(backend: str, corpus_size: int) -> str:
    """The backend a search uses: numpy (exact) or faiss (exact inner product over normalised vectors, faster
    on large corpora); `auto` takes faiss for corpora of FAISS_MIN_CORPUS or more when it is installed."""
    if backend not in BACKENDS:
        raise UserError(f"search backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "faiss" and _faiss() is None:
        raise UserError("--backend faiss needs FAISS (pip install faiss-cpu)")
    if backend == "auto":
        return "faiss" if corpus_size >= FAISS_MIN_CORPUS and _faiss() is not None else "numpy"
    return backend


def nearest(queries: np.ndarray, corpus: np.ndarray, k: int, backend: str = "auto",
            block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(indices [q, k], cosine scores [q, k]) of each query's `k` nearest corpus vectors, best first."""
    q, c = normalize(queries), normalize(corpus)
    k = min(k, len(c))
    if k < 1:
        raise UserError("the corpus is empty")
    if search_backend(backend, len(c)) == "faiss":
        faiss = _faiss()
        index = faiss.IndexFlatIP(c.shape[1])
        index.add(np.ascontiguousarray(c))
        scores, indices = index.search(np.ascontiguousarray(q), k)
        return indices.astype(np.int64), scores.astype(np.float32)
    indices = np.zeros((len(q), k), np.int64)
    scores = np.zeros((len(q), k), np.float32)
    for start in range(0, len(q), block):
        s = q[start:start + block] @ c.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
        indices[start:start + block] = np.take_along_axis(top, order, 1)
        scores[start:start + block] = np.take_along_axis(s, indices[start:start + block], 1)
    return indices, scores


def similar_sentences(predictor: Predictor, encoder: SentenceEncoder, texts: Sequence[str], settings: Settings,
                      top: int, seed: int = 0) -> list[list[tuple[str, float]]]:
    """For each text: `settings.num_return_sequences` generated candidates, duplicates and the text itself
    dropped, ranked by the cosine of their sentence vectors to the text's; the best `top` with their scores
    (bert4keras' SimBERT `gen_synonyms`)."""
    generated = predictor(list(texts), settings, seed)
    candidates = [list(dict.fromkeys(c for c in g if c.strip() and c != t)) for t, g in zip(texts, generated,
                                                                                             strict=True)]
    vectors = normalize(encoder([s for t, c in zip(texts, candidates, strict=True) for s in (t, *c)]))
    out, at = [], 0
    for cands in candidates:
        v, at = vectors[at:at + 1 + len(cands)], at + 1 + len(cands)
        scores = v[1:] @ v[0]
        order = np.argsort(-scores, kind="stable")[:top]
        out.append([(cands[i], float(scores[i])) for i in order])
    return out
