"""Pseudo-summary (gap-sentence) selection: T5 PEGASUS greedy LCS and PEGASUS ROUGE-1 "Ind-Orig".

Both work on a document's sentence list and return indices, so callers (and property tests) can check that
every sentence lands on exactly one side, in order. LCS is rapidfuzz's bit-parallel `LCSseq`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import LCSseq

from t5pegasus.pretrain.sentences import join_sentences


@dataclass(frozen=True)
class Selection:
    """Sentence indices (ascending) of the model input and of the summary/target."""

    source: list[int]
    target: list[int]


def greedy_lcs_selection(sentences: list[str], ratio: float = 0.25) -> Selection:
    """T5 PEGASUS: move sentences from source to summary, each round the one that maximises
    LCS(source without it, summary with it); stop when one source sentence is left or
    len(summary) / len(source) > ratio (characters). A source shorter than the summary is swapped with it.
    Ties go to the earliest sentence.
    """
    n = len(sentences)
    if n < 2:
        raise ValueError("greedy LCS selection needs at least two sentences")
    source = list(range(n))
    target: list[int] = []

    def text(idx: list[int]) -> str:
        return join_sentences([sentences[i] for i in idx])

    while True:
        best_i, best = source[0], -1
        for i in source:
            cand_source = text([j for j in source if j != i])
            cand_target = text(sorted(target + [i]))
            score = LCSseq.similarity(cand_source, cand_target)
            if score > best:
                best_i, best = i, score
        source.remove(best_i)
        target = sorted(target + [best_i])
        if len(source) == 1 or len(text(target)) > ratio * len(text(source)):
            break
    if len(text(source)) < len(text(target)):
        source, target = target, source
    return Selection(source, target)


_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def rouge_tokens(text: str) -> list[str]:
    """ROUGE units: lower-cased ASCII words, and single characters otherwise (CJK characters, punctuation)."""
    return _WORD.findall(text.lower())


def rouge1_f(a: Counter[str], b: Counter[str]) -> float:
    """ROUGE-1 F1 of two unigram count bags.

    2PR/(P+R) written as 2*overlap/(|a|+|b|): one division of integers, so scores that are equal as fractions
    are equal as floats and a tie really goes to the earlier sentence.
    """
    overlap = sum((a & b).values())
    if overlap == 0:
        return 0.0
    return 2 * overlap / (sum(a.values()) + sum(b.values()))


def ind_orig_selection(sentences: list[str], ratio: float = 0.3) -> Selection:
    """PEGASUS "Ind-Orig": score each sentence alone by ROUGE-1 F1 against the rest; the top `ratio`
    (at least one, ties to the earlier sentence) form the target, in document order."""
    n = len(sentences)
    if n < 2:
        raise ValueError("gap-sentence selection needs at least two sentences")
    bags = [Counter(rouge_tokens(s)) for s in sentences]
    total = sum(bags, Counter())
    scores = [rouge1_f(b, total - b) for b in bags]
    k = min(n - 1, max(1, round(ratio * n)))
    chosen = sorted(sorted(range(n), key=lambda i: (-scores[i], i))[:k])
    return Selection([i for i in range(n) if i not in set(chosen)], chosen)


def mask_plan(selection: Selection, n: int, keep_prob: float, rng: np.random.Generator) -> list[bool]:
    """For PEGASUS inputs: which sentences become a mask token (chosen ones, unless kept with keep_prob)."""
    chosen = set(selection.target)
    keep = rng.random(n) < keep_prob
    return [i in chosen and not keep[i] for i in range(n)]
