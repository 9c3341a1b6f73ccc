"""ROUGE against Google's rouge-score on pre-split tokens, BLEU against a direct computation, and the
character-level tokens both see."""

import math
from collections import Counter

import numpy as np
import pytest

from t5pegasus.finetune.metrics import corpus_bleu, metric_tokens, rouge_l, rouge_n, score


def test_tokens_are_cjk_characters_and_latin_words():
    assert metric_tokens("我爱北京Tiananmen 1998年，GPT-2模型！") == [
        "我", "爱", "北", "京", "tiananmen", "1998", "年", ",", "gpt", "-", "2", "模", "型", "!"]  # fmt: skip
    assert metric_tokens("  ") == [] and metric_tokens("ＡＢ１２") == ["ab12"]  # NFKC folds full-width forms


class _Spaces:
    """rouge-score tokenizer: the text is already tokens separated by spaces."""

    def tokenize(self, text):
        return text.split()


def _random_texts(rng, n):
    words = list("天地人你我他上下左右春夏秋冬") + ["alpha", "beta", "gamma", "7", "42"]
    texts = []
    for _ in range(n):
        length = int(rng.integers(0, 14)) if rng.random() < 0.95 else 0
        texts.append(" ".join(rng.choice(words, length)))
    return texts


def test_rouge_equals_rouge_score():
    from rouge_score import rouge_scorer

    rng = np.random.default_rng(0)
    preds, refs = _random_texts(rng, 300), _random_texts(rng, 300)
    preds[0], refs[0] = "", ""  # empty both sides
    preds[1], refs[1] = "天 地", ""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Spaces())
    want = {"rouge-1": [], "rouge-2": [], "rouge-l": []}
    for p, r in zip(preds, refs, strict=True):
        s = scorer.score(r, p)  # (target, prediction)
        want["rouge-1"].append(s["rouge1"].fmeasure)
        want["rouge-2"].append(s["rouge2"].fmeasure)
        want["rouge-l"].append(s["rougeL"].fmeasure)
        tp, tr = p.split(), r.split()
        assert rouge_n(tp, tr, 1) == pytest.approx(s["rouge1"].fmeasure, abs=1e-12)
        assert rouge_n(tp, tr, 2) == pytest.approx(s["rouge2"].fmeasure, abs=1e-12)
        assert rouge_l(tp, tr) == pytest.approx(s["rougeL"].fmeasure, abs=1e-12)
    got = score(preds, refs)  # metric_tokens splits these texts exactly at the spaces
    for name, values in want.items():
        assert got[name] == pytest.approx(100 * float(np.mean(values)), abs=1e-9)
    assert 5 < got["rouge-l"] < 95  # neither trivial nor degenerate


def test_rouge_of_raw_chinese_is_character_level():
    from rouge_score import rouge_scorer

    pred, ref = "今天天气很好，我们去公园。", "今天的天气不错，我们去了公园"
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_Spaces())
    s = scorer.score(" ".join(ref), " ".join(pred))  # one character a token
    got = score([pred], [ref])
    assert got["rouge-1"] == pytest.approx(100 * s["rouge1"].fmeasure, abs=1e-9)
    assert got["rouge-2"] == pytest.approx(100 * s["rouge2"].fmeasure, abs=1e-9)
    assert got["rouge-l"] == pytest.approx(100 * s["rougeL"].fmeasure, abs=1e-9)


def _direct_bleu(preds, refs):
    """Papineni et al.: clipped n-gram precisions over the corpus, geometric mean, brevity penalty."""
    matches, totals = [0] * 4, [0] * 4
    for p, r in zip(preds, refs, strict=True):
        for n in range(1, 5):
            pc = Counter(tuple(p[i : i + n]) for i in range(len(p) - n + 1))
            rc = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            matches[n - 1] += sum(min(c, rc[g]) for g, c in pc.items())
            totals[n - 1] += sum(pc.values())
    assert all(matches), "the direct check needs matches at every order"
    c, r = sum(len(p) for p in preds), sum(len(x) for x in refs)
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return 100 * bp * math.exp(sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / 4)


@pytest.mark.parametrize("shorter", [False, True])
def test_bleu_equals_direct_computation(shorter):
    refs = ["今天天气很好我们去公园散步", "人工智能改变了世界的很多方面", "the cat sat on the mat today"]
    preds = ["今天天气不错我们去公园散步吧", "人工智能改变了很多方面", "the cat sat on a mat today"]
    if shorter:  # brevity penalty
        preds = [p[: len(p) * 2 // 3] if i < 2 else p for i, p in enumerate(preds)]
    tp, tr = [metric_tokens(p) for p in preds], [metric_tokens(r) for r in refs]
    want = _direct_bleu(tp, tr)
    assert corpus_bleu(tp, tr) == pytest.approx(want, rel=1e-9)
    assert score(preds, refs)["bleu"] == pytest.approx(want, rel=1e-9)
    assert 0 < want < 100


def test_perfect_and_empty():
    assert score(["同一句话"], ["同一句话"]) == pytest.approx({"rouge-1": 100, "rouge-2": 100, "rouge-l": 100,
                                                              "bleu": 100})
    assert score([""], ["参考"])["rouge-l"] == 0.0
    assert score([], []) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu": 0.0}
