"""Data preparation speed on People's Daily: documents/s of one core (sentence split + T5 PEGASUS selection +
tokenize), and `prepare` end to end (read, make examples, write the dataset) with one worker vs one per core.

References: the issue's floor of 300 documents/s per core, and `prepare --workers 1` for the multi-core figure
(target: at least 1.7x on 2 cores). Documents are People's Daily articles (headline + body, ~580 characters), as
`iter_peoples_daily_documents()` yields them. Ends with one JSON line.
"""

import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
COPIES = 6  # the month repeated: a corpus long enough that the workers' start-up (jieba, tokenizer) is amortised

from t5pegasus.pretrain.corpora import iter_peoples_daily_documents, peoples_daily_paragraphs  # noqa: E402
from t5pegasus.pretrain.examples import ExampleConfig, ExampleMaker  # noqa: E402
from t5pegasus.pretrain.prepare import available_cores, prepare_dataset  # noqa: E402
from t5pegasus.text import BertJiebaTokenizer, build_wordpiece_vocab, save_vocab  # noqa: E402
from t5pegasus.text.load import tokenizer_spec  # noqa: E402


def per_core(tok: BertJiebaTokenizer, docs: list[str]) -> tuple[float, int]:
    """(documents/s, examples) of the example maker pinned to one core."""
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    if cores:
        os.sched_setaffinity(0, {min(cores)})
    try:
        maker = ExampleMaker(tok, ExampleConfig(task="seq2seq"))
        for d in docs[:50]:  # warm-up (jieba dictionary, caches)
            list(maker(d))
        maker = ExampleMaker(tok, ExampleConfig(task="seq2seq"))
        start = time.perf_counter()
        examples = sum(1 for d in docs for _ in maker(d))
        return len(docs) / (time.perf_counter() - start), examples
    finally:
        if cores:
            os.sched_setaffinity(0, cores)


def end_to_end(tok: BertJiebaTokenizer, vocab_path: Path, corpus: Path, out: Path, workers: int) -> float:
    """Seconds of `prepare_dataset` (read, make, write) with `workers` processes."""
    start = time.perf_counter()
    prepare_dataset([str(corpus)], out, tok, tokenizer_spec(vocab_path, tok, "wordpiece"),
                    ExampleConfig(task="seq2seq"), doc_sep="blank", progress=False, workers=workers)
    return time.perf_counter() - start


def main() -> None:
    vocab = build_wordpiece_vocab(itertools.islice(peoples_daily_paragraphs(), 20000), 50000, min_count=2)
    tok = BertJiebaTokenizer(vocab)
    docs = list(iter_peoples_daily_documents())
    ours, examples = per_core(tok, docs)
    chars = sum(map(len, docs))
    print(f"one core: {len(docs)} documents, {chars} chars, {examples} examples: {ours:.0f} docs/s")
    cores = available_cores()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_vocab(vocab, tmp / "vocab.txt")
        corpus = tmp / "corpus.txt"
        corpus.write_text("\n\n".join(docs * COPIES), encoding="utf-8")
        end_to_end(tok, tmp / "vocab.txt", corpus, tmp / "warm", cores)  # warm-up (worker start, tfds)
        times = {}
        for run, n in enumerate((1, cores, 1, cores)):  # alternated: the VM's speed drifts
            times.setdefault(n, []).append(end_to_end(tok, tmp / "vocab.txt", corpus, tmp / f"out-{run}", n))
    one, many = min(times[1]), min(times[cores])
    total = COPIES * len(docs)
    multi = {"one_worker_docs_s": round(total / one, 1), "all_cores_docs_s": round(total / many, 1),
             "workers": cores, "ratio": round(one / many, 3)}
    print(f"prepare end to end ({total} documents): 1 worker {one:.1f} s, {cores} workers {many:.1f} s, "
          f"ratio {one / many:.2f}")
    print(json.dumps({
        "bench": "pipeline", "unit": "documents/s/core", "ours": round(ours, 1), "reference": 300.0,
        "ratio": round(ours / 300.0, 3), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "multi_core": multi,
        "config": {"corpus": "peoples-daily 199801", "documents": len(docs), "chars": chars, "examples": examples,
                   "task": "seq2seq greedy LCS", "vocab_size": len(vocab), "max_source_len": 384,
                   "max_target_len": 128, "cores": cores, "reference_is": "issue floor 300 docs/s/core; "
                   "multi_core.ratio: prepare --workers 1 time / --workers <cores> time, best of two each"},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
