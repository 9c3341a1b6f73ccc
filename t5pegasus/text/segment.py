"""Chinese word segmentation with jieba's dictionary, HMM off (as T5 PEGASUS cuts its text).

`rjieba` (a Rust port using the same dictionary) is used when installed: it gives the same words several
times faster, which matters in the data pipeline. `jieba` is the fallback and the reference
(tests/test_text_segment.py checks that both agree on the demo corpus).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable


@functools.cache
def word_cutter(hmm: bool = False, prefer_rust: bool = True) -> Callable[[str], list[str]]:
    """A function text -> list of words."""
    if prefer_rust:
        try:
            import rjieba
        except ImportError:
            pass
        else:
            return functools.partial(rjieba.cut, hmm=hmm)
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return lambda text: list(jieba.cut(text, HMM=hmm))


def cut(text: str, hmm: bool = False) -> list[str]:
    """Words of `text`."""
    return word_cutter(hmm)(text)
