"""SimBERT data: JSONL groups of similar sentences -> stored groups -> batches of pairs in both orders.

A group file holds one JSON object a line, `{"text": "...", "synonyms": ["...", ...]}` (the format SimBERT was
trained on). A group is stored as one example: `ids` = its sentences' token ids one after another (no special
tokens; each sentence cut to `sentence_limit` tokens) and `lengths` = their token counts. Groups with fewer than
two distinct sentences give no pair and are dropped (counted).

Each time a group is read (every epoch anew, reproducible from the seed) two of its sentences are drawn, as
bert4keras' SimBERT generator does (a random permutation of text + synonyms, the first two), and the pair
(a, b) enters a batch in both orders with the UniLM layout: `[CLS] a [SEP] b [SEP]` (segment 0, then 1 from b
on), and `[CLS] b [SEP] a [SEP]`. A batch of P pairs holds the a->b rows first and the b->a rows after them,
so row i's partner is row i + P (mod 2P), and `pair_ids` names each row's pair. Splitting such a batch by
strided rows (the trainer's micro-batches, rows j, j+k, ...) keeps both rows of a pair together as long as
k divides P (`pairs_per_batch`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from t5pegasus.errors import UserError
from t5pegasus.text.base import Tokenizer

FORMAT = '{"text": "...", "synonyms": ["...", ...]}'


def _group(path: Path, number: int, line: str) -> list[str]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{number}: not valid JSON ({e.msg}); each line must be {FORMAT}") from None
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        raise UserError(f"{path}:{number}: expected {FORMAT}")
    synonyms = value.get("synonyms", [])
    if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
        raise UserError(f"{path}:{number}: \"synonyms\" must be a list of strings")
    out: list[str] = []
    for s in (value["text"], *synonyms):  # distinct non-empty sentences, text first
        if s.strip() and s not in out:
            out.append(s)
    return out


def read_groups(path: str | os.PathLike) -> list[list[str]]:
    """The groups of a JSONL group file (text first, then its distinct synonyms); a malformed line is a
    UserError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist (expected a JSONL file of {FORMAT})")
    groups = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").lstrip("\ufeff") if number == 1 else raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{number}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if line.strip():
                groups.append(_group(path, number, line))
    if not groups:
        raise UserError(f"{path} holds no groups (it is empty)")
    return groups


def sentence_limit(max_source_len: int, max_target_len: int) -> int:
    """Tokens a stored sentence keeps: enough for either role (`[CLS] s [SEP]` as the first segment,
    `s [SEP]` as the second)."""
    return max(1, max_source_len - 2, max_target_len - 1)


def group_example(tok: Tokenizer, sentences: Sequence[str], limit: int) -> dict[str, np.ndarray] | None:
    """The stored form of one group (None when fewer than two sentences have tokens)."""
    encoded = [ids[:limit] for ids in tok.encode_batch(list(sentences))]
    encoded = [ids for ids in encoded if ids]
    if len(encoded) < 2:
        return None
    return {"ids": np.asarray([t for ids in encoded for t in ids], np.int32),
            "lengths": np.asarray([len(ids) for ids in encoded], np.int32)}


def group_examples(tok: Tokenizer, groups: Sequence[Sequence[str]], limit: int,
                   stats: Counter[str]) -> Iterator[dict[str, np.ndarray]]:
    """Stored groups, counting what is used and dropped."""
    for sentences in groups:
        stats["groups read"] += 1
        example = group_example(tok, sentences, limit)
        if example is None:
            stats["groups dropped: fewer than two sentences"] += 1
            continue
        stats["documents used"] += 1
        stats["examples"] += 1
        yield example


def sentences_of(example: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A stored group's sentences (token id arrays)."""
    ends = np.cumsum(example["lengths"])
    return np.split(np.asarray(example["ids"], np.int32), ends[:-1])


def choose_pair(example: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Two distinct sentences of a stored group, drawn as bert4keras' SimBERT generator draws them."""
    sentences = sentences_of(example)
    i, j = rng.permutation(len(sentences))[:2]
    return {"first": sentences[i], "second": sentences[j]}


def pairs_per_batch(rows: int, processes: int = 1, accumulate: int = 1) -> int:
    """Pairs in each process's share of a global batch of `rows` rows (a UserError when pairs cannot stay
    whole: each process needs an even share, and its pairs must divide into `accumulate` micro-batches)."""
    if rows % processes or (rows // processes) % (2 * accumulate):
        raise UserError(f"SimBERT batches hold each pair in both orders: data.batch_size {rows} must be a multiple "
                        f"of 2 x {processes} process(es) x optim.accumulate {accumulate}")
    return rows // processes // 2


def pair_rows(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], cls_id: int, sep_id: int, pad_id: int,
              length: int | None = None, first_pair_id: int = 0) -> dict[str, np.ndarray]:
    """The batch of token-id pairs (without specials): rows 0..P-1 are `[CLS] a [SEP] b [SEP]`, rows P..2P-1
    `[CLS] b [SEP] a [SEP]`, segment ids 0 then 1, right-padded with `pad_id` (segment 0) to `length` (default:
    the longest row; longer rows are cut). Fields: `ids`, `segment_ids`, `mask` (real tokens), `targets` (the
    next token), `weights` (1 where that next token is second-segment text) [2P, n] and `pair_ids` [2P, 1]
    (`first_pair_id` + the pair's index; a column, so it shards over the batch as every other field), all
    int32."""
    ordered = [*pairs, *((b, a) for a, b in pairs)]
    rows, segs = [], []
    for a, b in ordered:
        first, second = [cls_id, *a, sep_id], [*b, sep_id]
        rows.append(first + second)
        segs.append([0] * len(first) + [1] * len(second))
    n = max(map(len, rows)) if length is None else length
    ids = np.full((len(rows), n), pad_id, np.int32)
    seg = np.zeros((len(rows), n), np.int32)
    for i, (r, s) in enumerate(zip(rows, segs, strict=True)):
        ids[i, :min(n, len(r))], seg[i, :min(n, len(s))] = r[:n], s[:n]
    mask = (np.arange(n)[None] < np.array([len(r) for r in rows])[:, None]).astype(np.int32)
    # position i predicts token i + 1 where that token is real target text (as the unilm rows of the loader)
    targets = np.pad(ids[:, 1:], ((0, 0), (0, 1)), constant_values=pad_id)
    weights = np.pad((seg[:, 1:] > 0) & (mask[:, 1:] > 0), ((0, 0), (0, 1))).astype(np.int32)
    pair_ids = (first_pair_id + np.tile(np.arange(len(pairs)), 2)).astype(np.int32)[:, None]
    return {"ids": ids, "segment_ids": seg, "mask": mask, "targets": targets, "weights": weights,
            "pair_ids": pair_ids}


def prepare_groups(inputs: Sequence[str], out_dir: str | os.PathLike, tok: Tokenizer, tokenizer_info: dict[str, Any],
                   config: Any, *, overwrite: bool = False,
                   groups: Sequence[Sequence[str]] | None = None) -> Counter[str]:
    """Write the `simbert` dataset of JSONL group files (`groups`: their contents, when already read);
    `config` is the `ExampleConfig` (its source / target lengths cut the sentences). Returns the counts."""
    from t5pegasus.pretrain.builder import write_dataset

    stats: Counter[str] = Counter()
    if groups is None:
        groups = [g for path in inputs for g in read_groups(path)]
    limit = sentence_limit(config.max_source_len, config.max_target_len)

    def metadata() -> dict[str, Any]:
        return {"inputs": [str(Path(i).resolve()) for i in inputs], "tokenizer": tokenizer_info,
                "config": config.to_dict(), "stats": dict(sorted(stats.items()))}

    write_dataset(out_dir, "simbert", lambda: group_examples(tok, groups, limit, stats), metadata,
                  overwrite=overwrite)
    return stats
