"""Subword regularization by Viterbi sampling over a unigram vocabulary.

The lattice holds every vocabulary piece that matches the text; a piece's weight is alpha * log-probability.
Forward pass: logsumexp of path weights into each position; backward: from the end, pick the piece ending
there with probability proportional to exp(forward[start] + weight - forward[end]). With `rng=None` the
same lattice gives the best (Viterbi) segmentation, which equals sentencepiece's `encode` for its model.
Scoring rules follow sentencepiece: an uncovered character is an unknown piece scored min_score - 10,
user-defined pieces score length * max_score - 0.1, and consecutive unknowns merge into one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_UNK_PENALTY = 10.0


class ViterbiSampler:
    """Sample (or find the best) segmentation of text into unigram pieces; returns ids."""

    def __init__(
        self,
        pieces: dict[str, tuple[int, float]],
        unk_id: int,
        unk_score: float,
        *,
        alpha: float = 1.0,
        normalize: Callable[[str], str] = lambda s: s,
    ) -> None:
        self.pieces = pieces
        self.unk_id = unk_id
        self.unk_score = unk_score
        self.alpha = alpha
        self.normalize = normalize
        self.max_len = max((len(p) for p in pieces), default=1)

    @classmethod
    def from_sentencepiece(cls, sp, alpha: float = 1.0) -> ViterbiSampler:
        """Build from a loaded unigram `SentencePieceProcessor` (normalisation included)."""
        from sentencepiece import sentencepiece_model_pb2 as pb

        model = pb.ModelProto()
        model.ParseFromString(sp.serialized_model_proto())
        kinds = pb.ModelProto.SentencePiece
        if model.trainer_spec.model_type != pb.TrainerSpec.UNIGRAM:
            raise ValueError("Viterbi sampling needs a unigram sentencepiece model")
        normal, user = {}, {}
        for i, p in enumerate(model.pieces):
            if p.type == kinds.NORMAL:
                normal[p.piece] = i
            elif p.type == kinds.USER_DEFINED:  # sentencepiece ranks these by length, not score
                user[p.piece] = i
        scores = [sp.get_score(i) for i in normal.values()]
        max_score, min_score = max(scores), min(scores)
        pieces = {p: (i, sp.get_score(i)) for p, i in normal.items()}
        pieces.update({p: (i, len(p) * max_score - 0.1) for p, i in user.items()})
        return cls(pieces, sp.unk_id(), min_score - _UNK_PENALTY, alpha=alpha, normalize=sp.normalize)

    def _edges(self, text: str) -> list[list[tuple[int, int, float]]]:
        """edges[end] = [(start, id, score)] for every piece (or unknown char) ending at `end`."""
        n = len(text)
        edges: list[list[tuple[int, int, float]]] = [[] for _ in range(n + 1)]
        for s in range(n):
            single = False
            for length in range(1, min(self.max_len, n - s) + 1):
                hit = self.pieces.get(text[s : s + length])
                if hit is not None:
                    edges[s + length].append((s, hit[0], hit[1]))
                    single = single or length == 1
            if not single:
                edges[s + 1].append((s, self.unk_id, self.unk_score))
        return edges

    def encode(self, text: str, rng: np.random.Generator | None = None) -> list[int]:
        """Ids of a sampled segmentation (`rng` given) or of the best one (`rng=None`)."""
        text = self.normalize(text)
        n = len(text)
        if n == 0:
            return []
        edges = self._edges(text)
        fwd = np.full(n + 1, -np.inf)
        fwd[0] = 0.0
        back: list[tuple[int, int]] = [(0, 0)] * (n + 1)
        for e in range(1, n + 1):
            cand = np.array([fwd[s] + self.alpha * sc for s, _, sc in edges[e]])
            if rng is None:
                k = int(np.argmax(cand))
                fwd[e] = cand[k]
                back[e] = edges[e][k][:2]
            else:
                fwd[e] = np.logaddexp.reduce(cand)
        ids: list[int] = []
        e = n
        while e > 0:
            if rng is None:
                s, i = back[e]
            else:
                cand = np.array([fwd[s] + self.alpha * sc for s, _, sc in edges[e]])
                p = np.exp(cand - fwd[e])
                k = int(rng.choice(len(p), p=p / p.sum()))
                s, i = edges[e][k][:2]
            if not (i == self.unk_id and ids and ids[-1] == self.unk_id):
                ids.append(i)
            e = s
        return ids[::-1]
