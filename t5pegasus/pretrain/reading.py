"""Read raw documents from text files robustly, counting everything skipped or repaired.

Files: a directory is walked (sorted, hidden files skipped). A file whose first 8 KiB holds a NUL byte is
binary and skipped; an empty file is counted. Documents are lines (`doc_sep="line"`) or blocks separated
by blank lines (`doc_sep="blank"`). Invalid UTF-8 is repaired (bad bytes dropped) when it is a small part
of the document, otherwise the document is dropped; control characters other than tab/newline are removed.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from t5pegasus.errors import UserError

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffe\uffff]")
MAX_BAD_FRACTION = 0.1


def list_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and directories (recursively, sorted) into a file list; UserError for a missing path."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(f for f in sorted(p.rglob("*")) if f.is_file() and not f.name.startswith("."))
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"input {p} does not exist")
    return out


def _blocks(f, doc_sep: str) -> Iterator[bytes]:
    if doc_sep == "line":
        yield from f
        return
    block: list[bytes] = []
    for line in f:
        if line.strip():
            block.append(line)
        elif block:
            yield b"".join(block)
            block = []
    if block:
        yield b"".join(block)


def decode_document(raw: bytes, stats: Counter[str]) -> str | None:
    """UTF-8 bytes -> clean text, or None (counted) when it is not text worth keeping."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        bad = text.count("\ufffd")
        if bad > MAX_BAD_FRACTION * max(1, len(text)):
            stats["dropped: invalid UTF-8"] += 1
            return None
        text = text.replace("\ufffd", "")
        stats["repaired: invalid UTF-8 bytes removed"] += 1
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
        stats["repaired: control characters removed"] += 1
    text = text.strip()
    if not text:
        stats["dropped: empty"] += 1
        return None
    return text


def read_documents(paths: Iterable[str | os.PathLike], stats: Counter[str], doc_sep: str = "line") -> Iterator[str]:
    """Documents of all files, in order; `stats` counts files and documents read, skipped and repaired."""
    check_doc_sep(doc_sep)
    files = list_files(paths)
    if not files:
        raise UserError("no input files found")
    for path in files:
        with open(path, "rb") as f:
            yield from file_documents(f, stats, doc_sep)


def check_doc_sep(doc_sep: str) -> None:
    if doc_sep not in ("line", "blank"):
        raise UserError(f"unknown document separator {doc_sep!r}; use line or blank")


def file_documents(f: BinaryIO, stats: Counter[str], doc_sep: str) -> Iterator[str]:
    """Documents of one open binary file (a local file, or one a Beam file system opened), counted in `stats`."""
    head = f.read(8192)
    if not head:
        stats["files: empty"] += 1
        return
    if b"\x00" in head:
        stats["files: skipped binary"] += 1
        return
    f.seek(0)
    stats["files: read"] += 1
    for raw in _blocks(f, doc_sep):
        if not raw.strip():
            continue
        stats["documents read"] += 1
        text = decode_document(raw, stats)
        if text is not None:
            yield text
