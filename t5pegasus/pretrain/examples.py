"""Training examples from documents: T5 PEGASUS pseudo-summaries, PEGASUS gap sentences, GPT LM, UniLM.

One `ExampleMaker` turns a raw document into zero or more examples (dicts of int32 numpy arrays):
split into sentences, pack into documents of at most ~1.5 x max source length characters, drop those with
fewer than `min_sentences`, select, tokenize, truncate. Every drop is counted in `stats` by reason.

With `sample_alpha` > 0 (a unigram sentencepiece tokenizer), every text of an example is cut with a sampled
segmentation (subword regularisation, `SentencePieceTokenizer.encode_sampled`), drawn from a generator seeded by
`seed` and the packed document's text, as the PEGASUS mask plan is: the dataset is the same for any number of
worker processes and for any order of the documents.

Stored features per task:
  seq2seq (T5 PEGASUS greedy LCS) and pegasus (Ind-Orig, masks):  source, target  (each with specials)
  lm:     ids   (bos? document eos)
  unilm:  ids = [CLS] source [SEP] target [SEP], segment_ids (0 source, 1 target)
  simbert: ids (a group's sentences, one after another), lengths (their token counts); made from JSONL
           groups of similar sentences by `t5pegasus.pretrain.groups`, not from documents
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from t5pegasus.pretrain.pseudo_summary import greedy_lcs_selection, ind_orig_selection, mask_plan
from t5pegasus.pretrain.sentences import join_sentences, pack_sentences, split_sentences
from t5pegasus.text.base import Tokenizer

TASKS = ("seq2seq", "pegasus", "lm", "unilm", "simbert")
FEATURES = {"seq2seq": ("source", "target"), "pegasus": ("source", "target"), "lm": ("ids",),
            "unilm": ("ids", "segment_ids"), "simbert": ("ids", "lengths")}  # fmt: skip
# The field a labelled fine-tuning example stores beside its task's ([1] int32: its row of the model's label
# embedding), and the batch field the loader makes of it ([b, 1]).
LABEL = "label"


@dataclass(frozen=True)
class ExampleConfig:
    """How documents become examples. Lengths are in tokens, specials included."""

    task: str = "seq2seq"
    max_source_len: int = 384
    max_target_len: int = 128
    max_len: int = 512  # lm
    summary_ratio: float = 0.25  # T5 PEGASUS stop rule
    gap_ratio: float = 0.3  # PEGASUS share of sentences chosen
    keep_prob: float = 0.0  # PEGASUS: chance a chosen sentence stays unmasked in the input
    min_sentences: int = 3
    doc_chars: int | None = None  # default 1.5 x max_source_len (lm: 1.5 x max_len)
    sentence_chars: int | None = None  # default doc_chars // 4
    seed: int = 0
    sample_alpha: float = 0.0  # > 0: sampled segmentations at this alpha (sentencepiece); 0: the best one

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; use one of {TASKS}")
        if self.sample_alpha < 0:
            raise ValueError(f"sample_alpha must be >= 0, not {self.sample_alpha}")

    @property
    def document_chars(self) -> int:
        if self.doc_chars:
            return self.doc_chars
        return int(1.5 * (self.max_len if self.task == "lm" else self.max_source_len))

    @property
    def max_sentence_chars(self) -> int:
        return self.sentence_chars or max(1, self.document_chars // 4)

    def to_dict(self) -> dict:
        return asdict(self)


class ExampleMaker:
    """Documents -> examples for one task and tokenizer; `stats` counts kept and dropped documents."""

    def __init__(self, tokenizer: Tokenizer, config: ExampleConfig | None = None) -> None:
        self.tok = tokenizer
        self.cfg = config or ExampleConfig()
        if self.cfg.task == "simbert":
            raise ValueError("simbert examples come from JSONL groups (t5pegasus.pretrain.groups), not documents")
        if self.cfg.sample_alpha and not hasattr(tokenizer, "encode_sampled"):
            raise ValueError("sample_alpha samples sentencepiece segmentations; this tokenizer is "
                             f"{type(tokenizer).__name__}")
        self.stats: Counter[str] = Counter()

    def _encode_batch(self, texts: list[str], sentences: list[str]) -> list[list[int]]:
        """`texts` of the example made from `sentences`: the best segmentations, or sampled ones."""
        alpha = self.cfg.sample_alpha
        if not alpha:
            return self.tok.encode_batch(texts)
        # stream 1 of (seed, document): the PEGASUS mask plan draws from stream-less (seed, document)
        rng = np.random.default_rng([self.cfg.seed, zlib.crc32("\n".join(sentences).encode("utf-8")), 1])
        return [self.tok.encode_sampled(t, rng, alpha) for t in texts]  # type: ignore[attr-defined]

    def documents(self, text: str) -> list[list[str]]:
        """Split and pack a raw document into sentence lists; drops (too few sentences) are counted."""
        sentences = split_sentences(text, self.cfg.max_sentence_chars)
        docs = pack_sentences(sentences, self.cfg.document_chars)
        min_s = 1 if self.cfg.task == "lm" else self.cfg.min_sentences
        kept = [d for d in docs if len(d) >= min_s]
        if len(kept) < len(docs):
            self.stats[f"packed documents dropped: fewer than {min_s} sentences"] += len(docs) - len(kept)
        return kept

    def __call__(self, text: str) -> Iterator[dict[str, np.ndarray]]:
        """All examples of one raw document."""
        docs = self.documents(text)
        if not docs:
            self.stats["documents without any example"] += 1
            return
        self.stats["documents used"] += 1
        for sentences in docs:
            example = self.make(sentences)
            self.stats["examples"] += 1
            yield example

    def make(self, sentences: list[str]) -> dict[str, np.ndarray]:
        """One example from one packed document (a list of sentences)."""
        c, tok = self.cfg, self.tok
        if c.task == "lm":
            ids = tok.add_special(self._encode_batch([join_sentences(sentences)], sentences)[0], c.max_len)
            return {"ids": np.asarray(ids, np.int32)}
        if c.task == "pegasus":
            source_ids, target_ids = self._pegasus(sentences)
        else:
            sel = greedy_lcs_selection(sentences, c.summary_ratio)
            texts = [join_sentences([sentences[i] for i in idx]) for idx in (sel.source, sel.target)]
            source_ids, target_ids = self._encode_batch(texts, sentences)
        if c.task == "unilm":
            src = tok.add_special(source_ids, c.max_source_len)
            tgt = tok.add_special(target_ids, c.max_target_len + (1 if tok.bos_id is not None else 0))
            if tok.bos_id is not None:
                tgt = tgt[1:]  # [CLS] src [SEP] tgt [SEP]: one [CLS] only
            ids = src + tgt
            seg = [0] * len(src) + [1] * len(tgt)
            return {"ids": np.asarray(ids, np.int32), "segment_ids": np.asarray(seg, np.int32)}
        return {
            "source": np.asarray(tok.add_special(source_ids, c.max_source_len), np.int32),
            "target": np.asarray(tok.add_special(target_ids, c.max_target_len), np.int32),
        }

    def _pegasus(self, sentences: list[str]) -> tuple[list[int], list[int]]:
        """PEGASUS Ind-Orig: each chosen sentence becomes one mask token in the input; target = them."""
        tok = self.tok
        if tok.mask_id is None:
            raise ValueError("the pegasus task needs a tokenizer with a mask token")
        sel = ind_orig_selection(sentences, self.cfg.gap_ratio)
        seed = [self.cfg.seed, zlib.crc32("\n".join(sentences).encode("utf-8"))]
        masked = mask_plan(sel, len(sentences), self.cfg.keep_prob, np.random.default_rng(seed))
        runs: list[list[str]] = []  # consecutive unmasked sentences are encoded together
        plan: list[int | None] = []
        for i, s in enumerate(sentences):
            if masked[i]:
                plan.append(tok.mask_id)
            elif plan and plan[-1] is None:
                runs[-1].append(s)
            else:
                plan.append(None)
                runs.append([s])
        texts = [join_sentences(r) for r in runs] + [join_sentences([sentences[i] for i in sel.target])]
        encoded = self._encode_batch(texts, sentences)
        source: list[int] = []
        k = 0
        for p in plan:
            if p is None:
                source.extend(encoded[k])
                k += 1
            else:
                source.append(p)
        return source, encoded[-1]
