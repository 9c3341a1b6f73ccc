"""Sentence splitting and pseudo-summary selection properties on People's Daily articles."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from t5pegasus.pretrain.corpora import iter_peoples_daily_documents, peoples_daily_title_pairs
from t5pegasus.pretrain.pseudo_summary import greedy_lcs_selection, ind_orig_selection, mask_plan
from t5pegasus.pretrain.sentences import join_sentences, pack_sentences, split_sentences

DOCS = [d for d in itertools.islice(iter_peoples_daily_documents(), 400)]
PACKED = [p for d in DOCS for p in pack_sentences(split_sentences(d, 144), 576) if len(p) >= 3]


def lcs_dp(a: str, b: str) -> int:
    """Plain dynamic-programming LCS length (independent of rapidfuzz)."""
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def test_corpus_documents_and_title_pairs():
    assert len(DOCS) == 400 and all(DOCS) and len(PACKED) > 300
    title, body = next(iter(peoples_daily_title_pairs()))
    assert title.startswith("迈向充满希望的新世纪") and "/" not in body and " " not in body


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(DOCS))
def test_split_keeps_every_character_in_order(doc):
    sentences = split_sentences(doc, max_chars=50)
    assert "".join(sentences) == "".join(doc.split())
    assert all(0 < len(s) <= 50 for s in sentences)


def test_split_english_and_chinese():
    text = "他说：“好！”然后走了。Hello world. Is it? Yes!\n标题"
    assert split_sentences(text) == ["他说：“好！”", "然后走了。", "Hello world.", "Is it?", "Yes!", "标题"]
    long = "甲" * 10_000_000  # one 10 MB line without punctuation is hard-cut, not kept whole
    pieces = split_sentences(long, max_chars=144)
    assert max(map(len, pieces)) == 144 and sum(map(len, pieces)) == len(long)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(PACKED))
def test_greedy_lcs_partition_rule_and_determinism(sentences):
    sel = greedy_lcs_selection(sentences, 0.25)
    assert sorted(sel.source + sel.target) == list(range(len(sentences)))  # each sentence on one side
    assert sel.source == sorted(sel.source) and sel.target == sorted(sel.target)  # in order
    src = join_sentences([sentences[i] for i in sel.source])
    tgt = join_sentences([sentences[i] for i in sel.target])
    assert len(src) >= len(tgt)  # the swap rule
    short, long_ = sorted([len(src), len(tgt)])
    assert min(len(sel.source), len(sel.target)) == 1 or short > 0.25 * long_  # stopped by the 0.25 rule
    assert greedy_lcs_selection(list(sentences), 0.25) == sel


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([p for p in PACKED if sum(map(len, p)) < 300]))
def test_first_greedy_move_maximises_lcs(sentences):
    n = len(sentences)
    scores = [lcs_dp(join_sentences([s for j, s in enumerate(sentences) if j != i]), sentences[i]) for i in range(n)]
    first = int(np.argmax(scores))
    sel = greedy_lcs_selection(sentences, ratio=0.0)  # stop after one move
    moved = sel.target if len(sel.target) == 1 else sel.source
    assert moved == [first]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(PACKED), st.floats(0.0, 1.0))
def test_ind_orig_selection(sentences, keep):
    sel = ind_orig_selection(sentences, 0.3)
    n = len(sentences)
    assert sorted(sel.source + sel.target) == list(range(n))
    assert len(sel.target) == min(n - 1, max(1, round(0.3 * n)))
    masked = mask_plan(sel, n, 0.0, np.random.default_rng(0))
    assert [i for i in range(n) if masked[i]] == sel.target
    some = mask_plan(sel, n, keep, np.random.default_rng(1))
    assert set(i for i in range(n) if some[i]) <= set(sel.target)
    assert ind_orig_selection(sentences, 0.3) == sel


def test_too_short_document_is_rejected():
    with pytest.raises(ValueError):
        greedy_lcs_selection(["只有一句。"])


class _CharTokenizer:
    """rouge-score tokenizer for Chinese: lower-cased ASCII words and single other characters."""

    def tokenize(self, text):
        import re

        return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(PACKED))
def test_ind_orig_picks_the_top_sentences_by_rouge_score_rouge1(sentences):
    """The chosen sentences are the top 30% by ROUGE-1 F1 against the rest, as Google's rouge-score computes it."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1"], tokenizer=_CharTokenizer())
    n = len(sentences)
    scores = [scorer.score("".join(sentences[:i] + sentences[i + 1:]), sentences[i])["rouge1"].fmeasure
              for i in range(n)]
    k = min(n - 1, max(1, round(0.3 * n)))
    chosen = ind_orig_selection(sentences, 0.3).target
    worst_chosen = min(scores[i] for i in chosen)
    best_left = max(scores[i] for i in range(n) if i not in chosen)
    assert len(chosen) == k and worst_chosen >= best_left - 1e-12
    want = sorted(sorted(range(n), key=lambda i: (-round(scores[i], 12), i))[:k])
    assert chosen == want
