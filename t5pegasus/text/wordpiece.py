"""T5 PEGASUS tokenizer: BERT WordPiece over a `vocab.txt`, with jieba words kept whole when in the vocab.

Behaviour (the released T5 PEGASUS / bert4keras one): lower-case + NFD, drop combining marks; cut with jieba
(HMM off); a jieba word found in the vocab is one token; anything else goes through BERT basic tokenization
(split on whitespace, punctuation and CJK characters, drop control characters) and greedy longest-match
WordPiece, where a word that WordPiece cannot cut all the way becomes one [UNK] (bert4keras 0.10 / 0.11
`_word_piece_tokenize` returns the whole word, which is not in the vocab; HF BERT does the same).

HF `tokenizers` (Rust) does the basic tokenization + WordPiece for speed. Where it could disagree with the
reference (a word it maps to [UNK], or characters the two libraries classify differently) the run falls back
to a Python implementation of the reference, so the result is exact either way.
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

from t5pegasus.errors import UserError
from t5pegasus.text.base import Tokenizer

_CACHE_SIZE = 200_000
BERT_SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}

_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)  # fmt: skip

CJK_PUNCTUATION = (
    "\uff02\uff03\uff04\uff05\uff06\uff07\uff08\uff09\uff0a\uff0b\uff0c\uff0d\uff0f\uff1a\uff1b\uff1c\uff1d"
    "\uff1e\uff20\uff3b\uff3c\uff3d\uff3e\uff3f\uff40\uff5b\uff5c\uff5d\uff5e\uff5f\uff60\uff62\uff63\uff64"
    "\u3000\u3001\u3003\u3008\u3009\u300a\u300b\u300c\u300d\u300e\u300f\u3010\u3011\u3014\u3015\u3016\u3017"
    "\u3018\u3019\u301a\u301b\u301c\u301d\u301e\u301f\u3030\u303e\u303f\u2013\u2014\u2018\u2019\u201b\u201c"
    "\u201d\u201e\u201f\u2026\u2027\ufe4f\ufe51\ufe54\u00b7\uff01\uff1f\uff61\u3002"
)


def is_glued(ch: str) -> bool:
    """Written without spaces around it: CJK ideographs and full-width forms (１９９８年, ＡＢＣ)."""
    return is_cjk(ch) or unicodedata.east_asian_width(ch) in ("F", "W")


def is_cjk(ch: str) -> bool:
    """True for a CJK ideograph (the BERT ranges)."""
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def is_punctuation(ch: str) -> bool:
    """BERT punctuation: ASCII symbols or any Unicode P* category."""
    code = ord(ch)
    return (
        33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126
        or unicodedata.category(ch).startswith("P")
    )  # fmt: skip


def _is_space(ch: str) -> bool:
    return ch in " \n\r\t" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cc", "Cf")


def lowercase_and_normalize(text: str) -> str:
    """Lower-case, NFD, and drop combining marks (Mn), as the reference does before cutting."""
    text = unicodedata.normalize("NFD", text.lower())
    if text.isascii():
        return text
    return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")


@functools.cache
def _unsafe_for_hf() -> re.Pattern[str]:
    """Characters that HF tokenizers' BertNormalizer treats differently from the reference.

    Unassigned / private-use / surrogate code points and line/paragraph separators (HF drops or splits them,
    the reference keeps them), and the CJK block 0x2B820-0x2B91F that HF does not count as CJK.
    """
    ranges: list[tuple[int, int]] = []
    start = None
    for code in range(0x110000):
        bad = unicodedata.category(chr(code)) in ("Cn", "Co", "Cs", "Zl", "Zp") or 0x2B820 <= code <= 0x2B91F
        if bad and start is None:
            start = code
        elif not bad and start is not None:
            ranges.append((start, code - 1))
            start = None
    if start is not None:
        ranges.append((start, 0x10FFFF))
    body = "".join(f"\\U{a:08x}-\\U{b:08x}" if a != b else f"\\U{a:08x}" for a, b in ranges)
    return re.compile(f"[{body}]")


def read_vocab(path: str | os.PathLike) -> list[str]:
    """Read a BERT `vocab.txt` (one token a line, id = line number)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"vocab file {path} not found; build one with `t5pegasus vocab`")
    try:
        tokens = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"vocab file {path} is not UTF-8 text ({e})") from None
    tokens = [t.rstrip("\r") for t in tokens]
    if not tokens:
        raise UserError(f"vocab file {path} is empty")
    return tokens


class BertJiebaTokenizer(Tokenizer):
    """The T5 PEGASUS tokenizer. `vocab` is a vocab.txt path or the token list itself."""

    def __init__(
        self,
        vocab: str | os.PathLike | Sequence[str],
        *,
        use_jieba: bool = True,
        do_lower_case: bool = True,
        word_maxlen: int = 200,
    ) -> None:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, normalizers, pre_tokenizers

        tokens = read_vocab(vocab) if isinstance(vocab, str | os.PathLike) else list(vocab)
        self._tokens = tokens
        self._vocab: dict[str, int] = {}
        for i, t in enumerate(tokens):
            self._vocab.setdefault(t, i)
        missing = [t for k, t in BERT_SPECIALS.items() if k != "mask" and t not in self._vocab]
        if missing:
            raise UserError(f"vocab lacks the special tokens {missing}; it must be a BERT-style vocab.txt")
        self.pad_id = self._vocab["[PAD]"]
        self.unk_id = self._vocab["[UNK]"]
        self.bos_id = self._vocab["[CLS]"]
        self.eos_id = self._vocab["[SEP]"]
        self.mask_id = self._vocab.get("[MASK]")
        self.decoder_start_id = self.bos_id
        self.use_jieba = use_jieba
        self.do_lower_case = do_lower_case
        self.word_maxlen = word_maxlen
        self._hf = HFTokenizer(
            models.WordPiece(vocab=self._vocab, unk_token="[UNK]", max_input_chars_per_word=word_maxlen)
        )
        self._hf.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=do_lower_case, lowercase=do_lower_case
        )
        self._hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._unsafe = _unsafe_for_hf()
        self._single = {
            t: i for t, i in self._vocab.items() if len(t) == 1 and (is_cjk(t) or is_punctuation(t))
        }
        self._cache: dict[str, list[int]] = {}
        self._cut = None
        if use_jieba:
            from t5pegasus.text.segment import word_cutter

            self._cut = word_cutter(hmm=False)

    # -- Tokenizer interface -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> list[str]:
        """The vocabulary, in id order."""
        return list(self._tokens)

    def token_to_id(self, token: str) -> int:
        return self._vocab.get(token, self.unk_id)

    def id_to_token(self, i: int) -> str:
        return self._tokens[i]

    def tokenize(self, text: str) -> list[str]:
        return [self._tokens[i] for i in self.encode(text)]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # Per text: a list of parts, each an in-vocab jieba word id or the index of a run of other words.
        plans: list[list[int | str]] = []
        runs: list[str] = []
        for text in texts:
            if self.do_lower_case:
                text = lowercase_and_normalize(text)
            plan: list[int | str] = []
            pending: list[str] = []
            words = self._cut(text) if self._cut is not None else [text]
            for w in words:
                i = self._vocab.get(w)
                if i is not None:
                    if pending:
                        plan.append(f"{len(runs)}")
                        runs.append(" ".join(pending))
                        pending = []
                    plan.append(i)
                else:
                    pending.append(w)
            if pending:
                plan.append(f"{len(runs)}")
                runs.append(" ".join(pending))
            plans.append(plan)
        run_ids = self._encode_runs(runs)
        out = []
        for plan in plans:
            ids: list[int] = []
            for p in plan:
                if isinstance(p, str):
                    ids.extend(run_ids[int(p)])
                else:
                    ids.append(p)
            out.append(ids)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, the reference way: CJK and pieces glued, words spaced, no space after CJK punct."""
        tokens = [self._tokens[int(i)] for i in ids]
        tokens = [t for t in tokens if not (t and t[0] == "[" and t[-1] == "]")]
        text = ""
        for i, token in enumerate(tokens):
            if token[:2] == "##":
                text += token[2:]
            elif len(token) == 1 and is_glued(token):
                text += token
            elif len(token) == 1 and is_punctuation(token):
                text += token + " "
            elif i > 0 and text and is_glued(text[-1]):
                text += token
            else:
                text += " " + token
        text = re.sub(" +", " ", text)
        text = re.sub("' (re|m|s|t|ve|d|ll) ", "'\\1 ", text)
        punct = "|".join(re.escape(p) for p in CJK_PUNCTUATION + "+-/={(<[")
        text = re.sub(f"({punct}) ", "\\1", text)
        text = re.sub(r"(\d\.) (\d)", "\\1\\2", text)
        return text.strip()

    # -- internals -----------------------------------------------------------------------------------------
    def _encode_runs(self, runs: list[str]) -> list[list[int]]:
        """Basic tokenization + WordPiece of text runs: HF where it provably agrees, else the reference."""
        out: list[list[int]] = [[] for _ in runs]
        fast, slow = [], set()
        for i, run in enumerate(runs):
            # Single CJK characters / punctuation in the vocab are their own token: no library call needed.
            ids = [self._single.get(c) for c in run if c != " "]
            if None not in ids:
                out[i] = ids  # type: ignore[assignment]
            elif (hit := self._cache.get(run)) is not None:
                out[i] = hit
            elif self._unsafe.search(run):
                slow.add(i)
            else:
                fast.append(i)
        if fast:
            encs = self._hf.encode_batch([runs[i] for i in fast], add_special_tokens=False)
            for i, enc in zip(fast, encs, strict=True):
                ids = enc.ids
                if self.unk_id in ids:
                    slow.add(i)
                else:
                    out[i] = ids
                    self._remember(runs[i], ids)
        for i in slow:
            out[i] = [self._vocab.get(t, self.unk_id) for t in self._basic_wordpiece(runs[i])]
            self._remember(runs[i], out[i])
        return out

    def _remember(self, run: str, ids: list[int]) -> None:
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[run] = ids

    def _basic_wordpiece(self, text: str) -> list[str]:
        """The reference (Python) BERT basic tokenization + WordPiece, token strings."""
        spaced = []
        for ch in text:
            if is_punctuation(ch) or is_cjk(ch):
                spaced.append(f" {ch} ")
            elif _is_space(ch):
                spaced.append(" ")
            elif ord(ch) == 0 or ord(ch) == 0xFFFD or _is_control(ch):
                continue
            else:
                spaced.append(ch)
        tokens: list[str] = []
        for word in "".join(spaced).strip().split():
            tokens.extend(self._wordpiece(word))
        return tokens

    def wordpiece(self, word: str, *, continuation: bool = False) -> list[str]:
        """Greedy longest-match WordPiece of one word, token strings (a piece that matches nothing is returned
        as it is, i.e. not in the vocab); with `continuation` the first piece is a `##` piece too."""
        return self._wordpiece(word, continuation)

    def _wordpiece(self, word: str, continuation: bool = False) -> list[str]:
        if len(word) > self.word_maxlen:
            return [word]
        tokens, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                sub = word[start:end]
                if start > 0 or continuation:
                    sub = "##" + sub
                if sub in self._vocab:
                    break
                end -= 1
            if start == end:  # no piece fits here: the whole word is one unknown token
                return [word]
            tokens.append(sub)
            start = end
        return tokens
