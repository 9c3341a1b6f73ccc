"""The fast segmenter (rjieba) cuts the demo corpus exactly as jieba does (HMM off)."""

import itertools

import pytest

from t5pegasus.pretrain.corpora import peoples_daily_paragraphs
from t5pegasus.text.segment import word_cutter


def test_rjieba_matches_jieba_on_peoples_daily():
    pytest.importorskip("rjieba", reason="rjieba is a core dependency; this guards a manual uninstall")
    fast, reference = word_cutter(False, prefer_rust=True), word_cutter(False, prefer_rust=False)
    assert fast is not reference
    paragraphs = list(itertools.islice(peoples_daily_paragraphs(), 0, 4000, 2))
    assert len(paragraphs) == 2000
    for text in paragraphs + ["Mixed 中英文 text，with ５ digits and ☃ symbols！", "", "   "]:
        assert fast(text) == reference(text), text
