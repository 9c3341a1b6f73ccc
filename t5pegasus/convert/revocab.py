"""A model with a new vocabulary: its embedding rows (and an untied head's columns) initialised from the old
ones, as the T5 PEGASUS release started from mT5 with its own WordPiece + jieba `vocab.txt`.

Each row of the new vocabulary is one of:

- special: a token that fills one of the family's special-id config fields (T5: pad, eos, unk, decoder start;
  BERT: pad, unk, [CLS], [SEP], [MASK]; GPT: pad, eos, bos) takes the old model's row of the same field, so
  [SEP] starts as mT5's `</s>` and T5 PEGASUS's decoder start [CLS] as mT5's decoder start (its pad row);
- copied: a token the old tokenizer has as one piece, with the same text in the same place of a word (see
  below), keeps that piece's row;
- averaged: any other token gets the mean of the rows of the pieces the old tokenizer cuts its text into (a
  piece repeated counts twice; unknown pieces are left out);
- random: a token of which the old tokenizer knows nothing but unknown pieces, and a reserved token
  ([unusedN], [MASK] for a T5, which has no mask field, a sentencepiece control piece) that the old tokenizer
  lacks: the model's own initialisation with the given seed (`fold_in(PRNGKey(seed), 0)`, the key a fresh run
  of that seed initialises with), so it is exactly the row a from-scratch model would have;
- padding: rows past the new tokenizer's size (when the vocabulary is rounded up): random too.

Where in a word a token stands decides which old piece is "the same token". A WordPiece `##x` continues a word;
a sentencepiece `▁x` starts one and a bare `x` continues one. A WordPiece token without `##` or a bare
sentencepiece piece that starts with a CJK ideograph or a full-width form is "glued": Chinese runs without
spaces, so mT5's sentencepiece sees a word inside a sentence as a bare piece (`我们`) and puts `▁` only after a
space or at the start of a text; cutting "我们" as a text of its own gives `['▁', '我们']`. So, per old
tokenizer:

| new token | sentencepiece (mT5) | CPM sentencepiece | WordPiece |
|---|---|---|---|
| word start `x` / `▁x` | `▁x` | `▁x` | `x` |
| continuation `##x` / bare `x` | `x` | `x` | `##x` |
| glued `我们` | `我们`, else `▁我们` | `▁我们`, else `我们` | `我们`, else `##我们` |

A token the old tokenizer lacks is cut in the same place: a word start by the old tokenizer's own `encode`
(sentencepiece's dummy `▁` prefix; a lone `▁` piece is dropped, it carries none of the token's text; CPM's
jieba pass; WordPiece's jieba and basic tokenization), a continuation or a glued token by sentencepiece with
the dummy prefix off (CPM: glued tokens are words, as its jieba-cut text has them), and a WordPiece
continuation by WordPiece with every piece a `##` piece. The old model's normalisation applies (an NFKC
sentencepiece model such as mT5's folds the full-width `，` into `,`: the new `，` starts as its `,`).

Which parameters have a vocabulary axis is read from the model's own logical axis names ("vocab"), so T5's
`shared` table and untied `lm_head`, BERT's word embeddings and MLM bias and GPT's token embeddings all follow
the rule along their vocabulary axis, with no family spelled out here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from t5pegasus import families
from t5pegasus.config import ConfigBase
from t5pegasus.errors import UserError
from t5pegasus.text.base import Tokenizer
from t5pegasus.text.spm import SentencePieceTokenizer
from t5pegasus.text.wordpiece import BertJiebaTokenizer, is_glued

WORD, CONTINUATION, GLUED, RESERVED = "word", "continuation", "glued", "reserved"
KINDS = ("special", "copied", "averaged", "random", "padding")
BOUNDARY = "\u2581"  # sentencepiece's word-start marker
_EXAMPLES = 8


@dataclasses.dataclass(frozen=True)
class Row:
    """Where one new row comes from: its kind (one of KINDS) and the old ids it copies or averages."""

    kind: str
    old_ids: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Report:
    """What a re-vocabularisation did: how many rows of each kind, and a few tokens of each."""

    old_tokens: int
    new_tokens: int
    rows: int
    counts: dict[str, int]
    reserved_random: int  # of the random rows: reserved tokens without an old counterpart (the rest: unknown text)
    mean_pieces: float  # pieces per averaged token
    examples: dict[str, list[str]]

    def summary(self) -> str:
        c = self.counts
        return (f"new vocabulary of {self.new_tokens} tokens ({self.rows} rows) from {self.old_tokens}: "
                f"{c['copied']} copied, {c['averaged']} averaged ({self.mean_pieces:.2f} old pieces each), "
                f"{c['special']} special, {c['random']} random ({self.reserved_random} reserved tokens the old "
                f"tokenizer lacks, {c['random'] - self.reserved_random} it knows only as unknown)"
                + (f", {c['padding']} padding rows (random)" if c["padding"] else ""))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Revocabulary:
    """The result: the new config and params, each new row's source, and the report."""

    cfg: ConfigBase
    params: Any
    rows: list[Row]
    report: Report


# --- the new vocabulary's tokens -------------------------------------------------------------------------------
def _form(text: str, continuation: bool) -> str:
    if not continuation:
        return WORD
    return GLUED if text and is_glued(text[0]) else CONTINUATION


def new_tokens(tok: Tokenizer) -> list[tuple[str, str]]:
    """(text, form) of every token of a tokenizer, by id: form is word | continuation | glued | reserved (for
    reserved tokens the text is the token string itself)."""
    if isinstance(tok, BertJiebaTokenizer):
        out = []
        for t in tok.tokens:
            if len(t) > 2 and t[0] == "[" and t[-1] == "]":
                out.append((t, RESERVED))
            elif t.startswith("##") and len(t) > 2:
                out.append((t[2:], CONTINUATION))
            else:
                out.append((t, GLUED if is_glued(t[0]) else WORD))
        return out
    if isinstance(tok, SentencePieceTokenizer):
        sp, out = tok.sp, []
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i) or sp.is_byte(i):
                out.append((piece, RESERVED))
            elif piece.startswith(BOUNDARY):
                out.append((piece[1:], WORD))
            else:
                out.append((piece, _form(piece, continuation=True)))
        return out
    raise UserError(f"re-vocabularising needs a WordPiece or sentencepiece tokenizer, not {type(tok).__name__}")


# --- the old tokenizer: which piece is the same token, and what pieces a text is cut into -------------------------
class _OldSentencePiece:
    def __init__(self, tok: SentencePieceTokenizer) -> None:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb

        self.tok, self.sp, self.unk = tok, tok.sp, tok.unk_id
        proto = pb.ModelProto()
        proto.ParseFromString(self.sp.serialized_model_proto())
        proto.normalizer_spec.add_dummy_prefix = False
        self.bare = spm.SentencePieceProcessor()
        self.bare.LoadFromSerializedProto(proto.SerializeToString())
        self.glued_is_word = tok.cpm  # CPM's training text is jieba-cut and space-joined: words start with ▁
        self.lone = self.sp.piece_to_id(BOUNDARY)

    def has(self, piece: str) -> int | None:
        i = self.sp.piece_to_id(piece)
        return i if self.sp.id_to_piece(i) == piece and not self.sp.is_unknown(i) else None

    def lookup(self, text: str, form: str) -> int | None:
        word, bare = BOUNDARY + text, text
        order = {WORD: (word,), CONTINUATION: (bare,),
                 GLUED: (word, bare) if self.glued_is_word else (bare, word)}[form]
        return next((i for i in map(self.has, order) if i is not None), None)

    def cut(self, text: str, form: str) -> list[int]:
        if form == WORD or (form == GLUED and self.glued_is_word):
            ids = [i for i in self.tok.encode(text) if i != self.lone]
        else:
            ids = self.bare.encode(text)
        return [i for i in ids if i != self.unk]


class _OldWordPiece:
    def __init__(self, tok: BertJiebaTokenizer) -> None:
        self.tok, self.unk = tok, tok.unk_id
        self.vocab = {t: i for i, t in reversed(list(enumerate(tok.tokens)))}

    def has(self, piece: str) -> int | None:
        return self.vocab.get(piece)

    def lookup(self, text: str, form: str) -> int | None:
        order = {WORD: (text,), CONTINUATION: ("##" + text,), GLUED: (text, "##" + text)}[form]
        return next((i for i in map(self.has, order) if i is not None), None)

    def cut(self, text: str, form: str) -> list[int]:
        if form == CONTINUATION:
            ids = [self.vocab.get(p, self.unk) for p in self.tok.wordpiece(text, continuation=True)]
        else:
            ids = self.tok.encode(text)
        return [i for i in ids if i != self.unk]


def _old_view(tok: Tokenizer) -> _OldSentencePiece | _OldWordPiece:
    if isinstance(tok, SentencePieceTokenizer):
        return _OldSentencePiece(tok)
    if isinstance(tok, BertJiebaTokenizer):
        return _OldWordPiece(tok)
    raise UserError(f"re-vocabularising needs the old model's WordPiece or sentencepiece tokenizer, not "
                    f"{type(tok).__name__}")


# --- the plan -----------------------------------------------------------------------------------------------------
def new_config(cfg: ConfigBase, new_tok: Tokenizer, rows: int | None = None) -> ConfigBase:
    """`cfg` with the new vocabulary: `rows` embedding rows (default: the tokenizer's size) and the special ids
    the new tokenizer has. A special-id field the new tokenizer cannot fill must still fit the new rows."""
    rows = int(rows or new_tok.vocab_size)
    if rows < new_tok.vocab_size:
        raise UserError(f"{rows} embedding rows cannot hold the new tokenizer's {new_tok.vocab_size} tokens")
    family = families.of(cfg)
    ids = family.special_ids(new_tok.special_ids)
    stale = [f for f in family.token_ids if f not in ids and int(getattr(cfg, f)) >= rows]
    if stale:
        raise UserError(f"the new tokenizer has no token for {', '.join(stale)} and the old ids do not fit its "
                        f"{rows} rows; give a tokenizer with those special tokens")
    return cfg.replace(vocab_size=rows, **ids)


def plan(old_cfg: ConfigBase, old_tok: Tokenizer, new_cfg: ConfigBase, new_tok: Tokenizer) -> list[Row]:
    """Where every row of `new_cfg`'s vocabulary comes from (see the module docstring)."""
    old = _old_view(old_tok)
    old_rows = int(old_cfg.vocab_size)
    rows: list[Row | None] = [None] * int(new_cfg.vocab_size)
    for field in families.of(new_cfg).token_ids:  # the family's order: the first field wins a shared row
        new_id, old_id = int(getattr(new_cfg, field)), int(getattr(old_cfg, field))
        if rows[new_id] is None and old_id < old_rows:
            rows[new_id] = Row("special", (old_id,))
    for i, (text, form) in enumerate(new_tokens(new_tok)):
        if rows[i] is not None:
            continue
        if form == RESERVED:
            j = old.has(text)
            rows[i] = Row("copied", (j,)) if j is not None and j < old_rows else Row("random")
            continue
        j = old.lookup(text, form)
        if j is not None and j < old_rows:
            rows[i] = Row("copied", (j,))
            continue
        pieces = tuple(p for p in old.cut(text, form) if p < old_rows)
        rows[i] = Row("averaged", pieces) if pieces else Row("random")
    return [r if r is not None else Row("padding") for r in rows]


def report(rows: Sequence[Row], old_tokens: int, new_tok: Tokenizer) -> Report:
    counts = {k: 0 for k in KINDS}
    examples: dict[str, list[str]] = {k: [] for k in KINDS}
    pieces = reserved = 0
    forms = new_tokens(new_tok)
    for i, r in enumerate(rows):
        reserved += r.kind == "random" and forms[i][1] == RESERVED
        counts[r.kind] += 1
        if r.kind == "averaged":
            pieces += len(r.old_ids)
        if r.kind != "padding" and len(examples[r.kind]) < _EXAMPLES:
            examples[r.kind].append(new_tok.id_to_token(i))
    return Report(old_tokens, new_tok.vocab_size, len(rows), counts, reserved, pieces / max(1, counts["averaged"]),
                  examples)


# --- the parameters -----------------------------------------------------------------------------------------------
def _init_fn(cfg: ConfigBase) -> Callable[[Any], Any]:
    """key -> boxed params of a fresh model of `cfg` (the family's default objective's call, a tiny batch)."""
    from t5pegasus.training.objectives import KINDS as OBJECTIVES
    from t5pegasus.training.objectives import Objective

    family = families.of(cfg)
    spec = OBJECTIVES[family.default_objective]
    objective = Objective(family.default_objective, family.model.load()(cfg), spec.call_args, spec.fields)
    dummy = objective.dummy_batch(1, {"source": 8, "target": 8, "length": 8})
    return lambda key: objective.init(key, dummy)


def _vocab_axes(boxed: Any) -> dict[tuple[str, ...], int]:
    """Path -> index of the "vocab" axis, for every parameter that has one."""
    import flax.linen as nn
    import jax

    out = {}
    leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for path, leaf in leaves:
        names = getattr(leaf, "names", None)
        if names and "vocab" in names:
            out[_names(path)] = tuple(names).index("vocab")
    return out


def _names(path: tuple) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _flat(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, (*prefix, str(k))))
        return out
    return {prefix: tree}


def _nest(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def remap(old: np.ndarray, fresh: np.ndarray, rows: Sequence[Row], axis: int) -> np.ndarray:
    """The new table along `axis`: copied rows, averaged rows (mean in float64), the rest from `fresh`."""
    o = np.moveaxis(np.asarray(old), axis, 0)
    out = np.array(np.moveaxis(np.asarray(fresh), axis, 0), dtype=o.dtype)
    single = [(i, r.old_ids[0]) for i, r in enumerate(rows) if r.kind in ("copied", "special")]
    if single:
        dst, src = map(np.asarray, zip(*single, strict=True))
        out[dst] = o[src]
    averaged = [(i, r.old_ids) for i, r in enumerate(rows) if r.kind == "averaged"]
    if averaged:
        dst = np.repeat([i for i, _ in averaged], [len(p) for _, p in averaged])
        src = np.concatenate([np.asarray(p) for _, p in averaged])
        sums = np.zeros((len(rows), *o.shape[1:]), np.float64)
        np.add.at(sums, dst, o[src].astype(np.float64))
        at = np.asarray([i for i, _ in averaged])
        out[at] = (sums[at] / np.asarray([len(p) for _, p in averaged], np.float64).reshape(-1, *[1] * (o.ndim - 1))
                   ).astype(o.dtype)
    return np.moveaxis(out, 0, axis)


def revocab(cfg: ConfigBase, params: Any, old_tok: Tokenizer, new_tok: Tokenizer, *, rows: int | None = None,
            seed: int = 0) -> Revocabulary:
    """(config, params) of `cfg` moved to `new_tok`'s vocabulary by the rule of the module docstring.

    `params` are the old model's (plain or boxed, unscanned or scanned as `cfg` says); `rows` the new embedding
    rows (default: the new tokenizer's size; the pretraining loop rounds up to a multiple of 128); `seed` the
    seed of the random rows. Every other parameter is passed through unchanged."""
    import jax

    from t5pegasus.models import unbox

    if new_tok.vocab_size == 0:
        raise UserError("the new tokenizer has no tokens")
    target = new_config(cfg, new_tok, rows)
    init = _init_fn(target)
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
    axes = _vocab_axes(boxed)
    wanted = _flat(unbox(boxed))
    given = _flat(unbox(params))
    missing = sorted(set(wanted) - set(given))
    extra = sorted(set(given) - set(wanted))
    if missing or extra:
        names = ["/".join(p) + " missing" for p in missing] + ["/".join(p) + " unexpected" for p in extra]
        raise UserError(f"the weights do not fit their own config ({len(names)} difference(s): "
                        f"{'; '.join(names[:5])})")
    old_rows = int(cfg.vocab_size)
    for path, axis in axes.items():
        if np.shape(given[path])[axis] != old_rows:
            raise UserError(f"{'/'.join(path)} has {np.shape(given[path])[axis]} vocabulary rows, the config "
                            f"says {old_rows}")
    row_plan = plan(cfg, old_tok, target, new_tok)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)  # the key a fresh run of this seed initialises with
    order = sorted(axes)
    # Only the vocabulary tables leave the jitted init, so XLA computes nothing else.
    fresh = jax.jit(lambda k: [_flat(unbox(init(k)))[p] for p in order])(key)
    out = dict(given)
    for path, table in zip(order, fresh, strict=True):
        out[path] = remap(np.asarray(given[path]), np.asarray(table), row_plan, axes[path])
    return Revocabulary(target, _nest(out), row_plan, report(row_plan, old_tok.vocab_size, new_tok))


def revocab_folder(cfg: ConfigBase, params: Any, src: str | os.PathLike, vocab: str | os.PathLike, *,
                   tokenizer: str | os.PathLike | None = None, seed: int = 0) -> Revocabulary:
    """`revocab` of weights read from the model folder `src` to the vocabulary file `vocab` (vocab.txt or a
    sentencepiece .model); the old tokenizer is `tokenizer`, else the folder's own (as `model_folder` finds it)."""
    from t5pegasus.convert.detect import detect, model_dir
    from t5pegasus.convert.model_folder import align_special_ids, open_tokenizer
    from t5pegasus.text.load import load_tokenizer

    old, _, _ = open_tokenizer(model_dir(src), detect(Path(src)), tokenizer)
    new = load_tokenizer(vocab)
    return revocab(align_special_ids(cfg, old), params, old, new, seed=seed)
