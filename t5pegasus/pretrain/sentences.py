"""Sentence splitting (Chinese and English) and packing sentences into bounded documents.

Split on newlines and 。！？!? (closing quotes/brackets stay with their sentence), and on . ! ? followed by
whitespace for English. A piece longer than `max_chars` is cut again at commas/semicolons, and hard-cut when
it has none (a 10 MB line cannot blow up the pipeline). Consecutive sentences are packed into documents of
at most `max_chars` characters; short documents are the caller's to drop.
"""

from __future__ import annotations

import itertools
import re

_CLOSERS = "”’」』）)》】\"'"
_BOUNDARY = re.compile(rf"[。！？!?]+[{_CLOSERS}]*|\.+[{_CLOSERS}]*(?=\s)|\n")
_CLAUSE = re.compile(r"[^，,；;]*(?:[，,；;]+|$)")


def _cut_long(piece: str, max_chars: int) -> list[str]:
    """Cut a too-long piece at commas/semicolons, packing clauses up to max_chars; hard-cut what remains."""
    out: list[str] = []
    cur = ""
    for clause in _CLAUSE.findall(piece):
        if not clause:
            continue
        if len(clause) > max_chars:
            if cur:
                out.append(cur)
            cut = range(0, len(clause), max_chars)
            out.extend(clause[i : i + max_chars] for i in cut[:-1])
            clause = clause[cut[-1] :]
            cur = ""
        if cur and len(cur) + len(clause) > max_chars:
            out.append(cur)
            cur = ""
        cur += clause
    if cur:
        out.append(cur)
    return out


def split_sentences(text: str, max_chars: int | None = None) -> list[str]:
    """Sentences of `text`, stripped, non-empty, in order; none longer than `max_chars` (when given)."""
    out: list[str] = []
    start = 0
    for m in itertools.chain(_BOUNDARY.finditer(text), [None]):
        end = len(text) if m is None else m.end()
        s = text[start:end].strip()
        start = end
        if not s:
            continue
        if max_chars is not None and len(s) > max_chars:
            out.extend(p for p in (q.strip() for q in _cut_long(s, max_chars)) if p)
        else:
            out.append(s)
    return out


def join_sentences(sentences: list[str]) -> str:
    """Concatenate sentences: no separator for CJK text, one space between two ASCII-bounded sentences."""
    parts: list[str] = []
    for s in sentences:
        if parts and parts[-1][-1:].isascii() and s[:1].isascii():
            parts.append(" ")
        parts.append(s)
    return "".join(parts)


def pack_sentences(sentences: list[str], max_chars: int) -> list[list[str]]:
    """Greedily group consecutive sentences into documents of at most `max_chars` characters."""
    docs: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for s in sentences:
        if cur and size + len(s) > max_chars:
            docs.append(cur)
            cur, size = [], 0
        cur.append(s)
        size += len(s)
    if cur:
        docs.append(cur)
    return docs
