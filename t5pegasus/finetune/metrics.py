"""ROUGE-1/2/L F1 and corpus BLEU of generated text against references, character-level for Chinese.

Both metrics see the same tokens (`metric_tokens`): after NFKC and lower-casing, every CJK character is one
token, a run of other letters/digits is one token, any other non-space character (punctuation) is one token.
ROUGE is the mean over examples of the per-example F1 (what Google's `rouge-score` computes per example, with
the LCS from rapidfuzz); BLEU is sacrebleu's corpus BLEU on those tokens (tokenize="none", default smoothing).
All scores are percentages (0-100).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu")
# what may pick the best model: a generation score (higher is better) or the dev loss ("loss": the token
# cross-entropy of the dev pairs, lower is better; the one that means something for an LM generating from nothing)
SELECTION = ("rouge-l", "rouge-1", "rouge-2", "bleu", "loss")


def better(metric: str, new: float, old: float | None) -> bool:
    """Whether `new` beats the best value so far of `metric` (`old`; None: nothing yet)."""
    return old is None or (new < old if metric == "loss" else new > old)

_CJK = (
    "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f"
)
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]", re.UNICODE)


def metric_tokens(text: str) -> list[str]:
    """Text -> metric tokens: each CJK character, each run of other letters/digits, each punctuation mark."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _f1(overlap: float, n_pred: int, n_ref: int) -> float:
    precision = overlap / max(n_pred, 1)
    recall = overlap / max(n_ref, 1)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def rouge_n(pred: Sequence[str], ref: Sequence[str], n: int) -> float:
    """ROUGE-N F1 of two token lists (clipped n-gram overlap)."""
    p, r = _ngrams(pred, n), _ngrams(ref, n)
    return _f1(sum((p & r).values()), sum(p.values()), sum(r.values()))


def rouge_l(pred: Sequence[str], ref: Sequence[str]) -> float:
    """ROUGE-L F1 of two token lists (longest common subsequence, computed by rapidfuzz)."""
    from rapidfuzz.distance import LCSseq

    if not pred or not ref:
        return 0.0
    return _f1(LCSseq.similarity(list(pred), list(ref)), len(pred), len(ref))


def corpus_bleu(preds: Sequence[Sequence[str]], refs: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (0-100) of token lists, one reference each (sacrebleu on space-joined tokens)."""
    import sacrebleu

    hyps = [" ".join(p) for p in preds]
    return float(sacrebleu.corpus_bleu(hyps, [[" ".join(r) for r in refs]], tokenize="none").score)


def score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{rouge-1, rouge-2, rouge-l, bleu} (percentages) of predicted texts against reference texts."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return {m: 0.0 for m in METRICS}
    preds = [metric_tokens(t) for t in predictions]
    refs = [metric_tokens(t) for t in references]
    n = len(refs)
    return {
        "rouge-1": 100 * sum(rouge_n(p, r, 1) for p, r in zip(preds, refs, strict=True)) / n,
        "rouge-2": 100 * sum(rouge_n(p, r, 2) for p, r in zip(preds, refs, strict=True)) / n,
        "rouge-l": 100 * sum(rouge_l(p, r) for p, r in zip(preds, refs, strict=True)) / n,
        "bleu": corpus_bleu(preds, refs),
    }
