"""End-to-end documents/s on People's Daily: sentence split + T5 PEGASUS selection + tokenize, one core.

Reference: the issue's floor of 300 documents/s per core. Documents are People's Daily articles
(headline + body, ~580 characters), as `iter_peoples_daily_documents()` yields them.
"""

import itertools
import json
import os
import platform
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

from t5pegasus.pretrain.corpora import iter_peoples_daily_documents, peoples_daily_paragraphs  # noqa: E402
from t5pegasus.pretrain.examples import ExampleConfig, ExampleMaker  # noqa: E402
from t5pegasus.text import BertJiebaTokenizer, build_wordpiece_vocab  # noqa: E402


def main() -> None:
    vocab = build_wordpiece_vocab(itertools.islice(peoples_daily_paragraphs(), 20000), 50000, min_count=2)
    tok = BertJiebaTokenizer(vocab)
    docs = list(iter_peoples_daily_documents())
    maker = ExampleMaker(tok, ExampleConfig(task="seq2seq"))
    for d in docs[:50]:  # warm-up (jieba dictionary, caches)
        list(maker(d))
    maker = ExampleMaker(tok, ExampleConfig(task="seq2seq"))
    start = time.perf_counter()
    examples = sum(1 for d in docs for _ in maker(d))
    secs = time.perf_counter() - start
    chars = sum(map(len, docs))
    ours = len(docs) / secs
    print(f"{len(docs)} documents, {chars} chars, {examples} examples in {secs:.1f}s: "
          f"{ours:.0f} docs/s, {chars / secs / 1e3:.0f}k chars/s")  # fmt: skip
    print(json.dumps({
        "bench": "pipeline", "unit": "documents/s/core", "ours": round(ours, 1), "reference": 300.0,
        "ratio": round(ours / 300.0, 3), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "config": {"corpus": "peoples-daily 199801", "documents": len(docs), "chars": chars, "examples": examples,
                   "task": "seq2seq greedy LCS", "vocab_size": len(vocab), "max_source_len": 384,
                   "max_target_len": 128, "cores": 1, "reference_is": "issue floor 300 docs/s/core"},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
