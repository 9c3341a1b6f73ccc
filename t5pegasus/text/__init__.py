"""Tokenizers (T5 PEGASUS WordPiece + jieba, sentencepiece / CPM), vocabulary building, subword sampling."""

from t5pegasus.text.base import Tokenizer
from t5pegasus.text.load import load_tokenizer
from t5pegasus.text.sampling import ViterbiSampler
from t5pegasus.text.spm import SentencePieceTokenizer
from t5pegasus.text.vocab import build_wordpiece_vocab, cpm_pretokenize, save_vocab, train_sentencepiece
from t5pegasus.text.wordpiece import BertJiebaTokenizer, lowercase_and_normalize, read_vocab

__all__ = [
    "BertJiebaTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "ViterbiSampler",
    "build_wordpiece_vocab",
    "cpm_pretokenize",
    "load_tokenizer",
    "lowercase_and_normalize",
    "read_vocab",
    "save_vocab",
    "train_sentencepiece",
]
