"""The T5 PEGASUS tokenizer for HF transformers (shipped by `t5pegasus convert --to hf` beside a vocab.txt).

HF's BertTokenizer splits Chinese into single characters; T5 PEGASUS first cuts words with jieba and keeps a
word whole when the vocab has it. This is HF's Python BertTokenizer with that cut, and it gives the ids of
t5pegasus's `BertJiebaTokenizer` (the released T5 PEGASUS / bert4keras behaviour):

- lower-case, NFD, combining marks dropped;
- jieba cut with the HMM off; a word found in the vocab is one token;
- any other word: BERT basic tokenization (split on whitespace, punctuation and CJK characters, control
  characters dropped) and greedy longest-match WordPiece, where a word that cannot be cut all the way is
  one [UNK] (as bert4keras returns it, and HF's BERT does); a word over 200 characters is one [UNK].

    AutoTokenizer.from_pretrained(folder, trust_remote_code=True)

Text is not split at special-token strings (`split_special_tokens` defaults to True), as in t5pegasus: "[CLS]"
typed in the text is ordinary text. Needs jieba (`pip install jieba`). Written by the t5pegasus project and
self-contained on purpose (it runs where t5pegasus is not installed); its tests check it against t5pegasus.
"""

import logging
import re
import unicodedata
from pathlib import Path

import jieba

try:  # transformers 5: BertTokenizer is the Rust-backed one; the Python one is BertTokenizerLegacy
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as PythonBertTokenizer
except ImportError:  # transformers 4: BertTokenizer is the Python one
    from transformers import BertTokenizer as PythonBertTokenizer

_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)  # fmt: skip


# Punctuation after which decoding puts no space.
_CJK_PUNCTUATION = (
    "\uff02\uff03\uff04\uff05\uff06\uff07\uff08\uff09\uff0a\uff0b\uff0c\uff0d\uff0f\uff1a\uff1b\uff1c\uff1d"
    "\uff1e\uff20\uff3b\uff3c\uff3d\uff3e\uff3f\uff40\uff5b\uff5c\uff5d\uff5e\uff5f\uff60\uff62\uff63\uff64"
    "\u3000\u3001\u3003\u3008\u3009\u300a\u300b\u300c\u300d\u300e\u300f\u3010\u3011\u3014\u3015\u3016\u3017"
    "\u3018\u3019\u301a\u301b\u301c\u301d\u301e\u301f\u3030\u303e\u303f\u2013\u2014\u2018\u2019\u201b\u201c"
    "\u201d\u201e\u201f\u2026\u2027\ufe4f\ufe51\ufe54\u00b7\uff01\uff1f\uff61\u3002"
)


def _is_cjk(ch):
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def _is_punctuation(ch):
    code = ord(ch)
    return (33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126
            or unicodedata.category(ch).startswith("P"))


def _glued(ch):
    """Written without spaces around it: CJK ideographs and full-width forms."""
    return _is_cjk(ch) or unicodedata.east_asian_width(ch) in ("F", "W")


def _normalize(text):
    """Lower-case, NFD, combining marks (Mn) dropped."""
    text = unicodedata.normalize("NFD", text.lower())
    if text.isascii():
        return text
    return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")


def _basic_words(text):
    """BERT basic tokenization: punctuation and CJK characters alone, split on whitespace, controls dropped."""
    spaced = []
    for ch in text:
        if _is_punctuation(ch) or _is_cjk(ch):
            spaced.append(f" {ch} ")
        elif ch in " \n\r\t" or unicodedata.category(ch) == "Zs":
            spaced.append(" ")
        elif ord(ch) == 0 or ord(ch) == 0xFFFD or unicodedata.category(ch) in ("Cc", "Cf"):
            continue
        else:
            spaced.append(ch)
    return "".join(spaced).strip().split()


class T5PegasusTokenizer(PythonBertTokenizer):
    """HF's Python BertTokenizer with T5 PEGASUS's jieba cut and WordPiece (see the module docstring)."""

    def __init__(self, vocab_file, *args, word_maxlen=200, **kwargs):
        kwargs.setdefault("split_special_tokens", True)
        kwargs.setdefault("clean_up_tokenization_spaces", False)  # convert_tokens_to_string spaces as t5pegasus
        super().__init__(vocab_file, *args, **kwargs)
        # The vocab as t5pegasus reads it: str.splitlines, and the first of duplicated tokens wins.
        tokens = [t.rstrip("\r") for t in Path(vocab_file).read_text(encoding="utf-8").splitlines()]
        self.vocab = {}
        for i, token in enumerate(tokens):
            self.vocab.setdefault(token, i)
        self.ids_to_tokens = dict(enumerate(tokens))
        self.word_maxlen = word_maxlen
        jieba.setLogLevel(logging.WARNING)

    def _tokenize(self, text, **kwargs):
        if self.do_lower_case:
            text = _normalize(text)
        tokens = []
        for word in jieba.cut(text, HMM=False):
            if word in self.vocab:
                tokens.append(word)
            else:
                for piece in _basic_words(word):
                    tokens.extend(self._wordpiece(piece))
        return tokens

    def _wordpiece(self, word):
        """Greedy longest-match pieces; a word with a place no piece fits is one [UNK]."""
        if len(word) > self.word_maxlen:
            return [word]  # its id is [UNK]'s unless the vocab holds the whole word
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces

    def convert_tokens_to_string(self, tokens):
        """Tokens -> text as t5pegasus decodes: bracketed tokens dropped, CJK and ## pieces glued, words spaced,
        no space after CJK punctuation."""
        tokens = [t for t in tokens if not (t and t[0] == "[" and t[-1] == "]")]
        text = ""
        for i, token in enumerate(tokens):
            if token[:2] == "##":
                text += token[2:]
            elif len(token) == 1 and _glued(token):
                text += token
            elif len(token) == 1 and _is_punctuation(token):
                text += token + " "
            elif i > 0 and text and _glued(text[-1]):
                text += token
            else:
                text += " " + token
        text = re.sub(" +", " ", text)
        text = re.sub("' (re|m|s|t|ve|d|ll) ", "'\\1 ", text)
        punct = "|".join(re.escape(p) for p in _CJK_PUNCTUATION + "+-/={(<[")
        text = re.sub(f"({punct}) ", "\\1", text)
        text = re.sub(r"(\d\.) (\d)", "\\1\\2", text)
        return text.strip()
