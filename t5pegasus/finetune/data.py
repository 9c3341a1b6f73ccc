"""Supervised pairs: reading JSONL / TSV files, tokenizing them, and storing them as prepared datasets.

Files: JSON lines `{"src": ..., "tgt": ...}` (`.jsonl` / `.json`, or any file whose first line starts with
`{`), or TSV lines `title<TAB>content` (source = content, target = title). Blank lines are skipped; any other
malformed line is a UserError naming the file and line. A JSONL line may give a condition `"label"` (a string
such as "pos", or an integer; every line of a file or none) for a model with a label embedding, and a line
`{"text": ..., "label": ...}` is a whole text to generate from nothing (a language model: an empty source).

Stored examples reuse the pretraining layouts, so the training loop, its grain loader, sharding and resume
work unchanged:
  seq2seq (T5):      source = [CLS] src [SEP], target = [CLS] tgt [SEP]  (`src </s>`, `tgt </s>` for mT5)
  simbert (SimBERT): JSONL groups `{"text": ..., "synonyms": [...]}` stored as `t5pegasus.pretrain.groups`
      does (the loader draws a pair per group and epoch, both orders in a batch); the dev file is scored by
      generating from each group's text against its first synonym (`group_pairs`).
  prompt (GPT, UniLM): the `unilm` layout, ids = [CLS] src [SEP] tgt [SEP] with segment ids 0 / 1. The UniLM
      objective reads it as is; the GPT `lm` objective reads `ids`, `targets` (ids shifted) and `weights`,
      which the loader sets to 1 only where the next token is target text, so the loss covers the target only.
      With labels, each example also stores `label` [1]: its row of the model's label embedding
      (`BertConfig.condition_index`; the label names live in the model config, `condition_labels`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from t5pegasus.errors import UserError
from t5pegasus.pretrain.examples import LABEL
from t5pegasus.text.base import Tokenizer

# objective -> stored task of the prepared dataset
LAYOUT = {"seq2seq": "seq2seq", "lm": "unilm", "unilm": "unilm", "simbert": "simbert"}


Label = str | int


@dataclasses.dataclass(frozen=True)
class Pair:
    src: str
    tgt: str
    label: Label | None = None  # the condition label (a model with a label embedding)


def _is_jsonl(path: Path, first_line: str) -> bool:
    return path.suffix.lower() in (".jsonl", ".json", ".ndjson") or first_line.lstrip().startswith("{")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines; bad UTF-8 is a UserError naming the line."""
    if not path.is_file():
        raise UserError(f"{path} does not exist (expected a JSONL file of {{\"src\", \"tgt\"}} or a TSV file "
                        f"of title<TAB>content lines)")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{number}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if number == 1:
                line = line.lstrip("\ufeff")
            if line.strip():
                yield number, line


def _label(path: Path, number: int, value: dict[str, Any]) -> Label | None:
    label = value.get("label")
    if label is None:
        return None
    if isinstance(label, bool) or not isinstance(label, (str, int)) or (isinstance(label, str) and not label.strip()):
        raise UserError(f"{path}:{number}: \"label\" must be a non-empty string or an integer, got {label!r}")
    return label


def _json_pair(path: Path, number: int, line: str, need_target: bool) -> Pair:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{number}: not valid JSON ({e.msg}); each line must be "
                        f"{{\"src\": \"...\", \"tgt\": \"...\"}}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}:{number}: expected a JSON object with \"src\" and \"tgt\", got "
                        f"{type(value).__name__}")
    label = _label(path, number, value)
    if "src" not in value and "tgt" not in value:
        if need_target and isinstance(value.get("text"), str):  # a whole text from nothing: an empty source
            if not value["text"].strip():
                raise UserError(f"{path}:{number}: empty text")
            return Pair("", value["text"], label)
        if not need_target and label is not None:  # generate from nothing, under a label
            return Pair("", "", label)
    keys = ("src", "tgt") if need_target else ("src",)
    for key in keys:
        if not isinstance(value.get(key), str):
            what = "is missing" if key not in value else f"is a {type(value[key]).__name__}, not a string"
            raise UserError(f"{path}:{number}: key {key!r} {what} (keys here: {', '.join(map(str, value)) or 'none'})")
    tgt = value.get("tgt", "")
    if not isinstance(tgt, str):
        tgt = ""
    if need_target and (not value["src"].strip() or not tgt.strip()):
        raise UserError(f"{path}:{number}: empty {'src' if not value['src'].strip() else 'tgt'}")
    return Pair(value["src"], tgt, label)  # an input to generate from may be "" (from nothing)


def _tsv_pair(path: Path, number: int, line: str, need_target: bool) -> Pair:
    title, tab, content = line.partition("\t")
    if not tab:
        if not need_target:
            return Pair(line, "")
        raise UserError(f"{path}:{number}: no tab; TSV lines are title<TAB>content (or use JSONL with "
                        f"\"src\" and \"tgt\")")
    if not content.strip() or (need_target and not title.strip()):
        raise UserError(f"{path}:{number}: empty {'content' if not content.strip() else 'title'}")
    return Pair(content, title)


def parse_pairs(lines: Sequence[tuple[int, str]], where: str | os.PathLike, *, need_target: bool = True) -> list[Pair]:
    """Pairs of numbered non-blank lines (JSONL when the name ends in .jsonl/.json or the first line starts
    with `{`, else TSV); errors name `where` and the line number."""
    if not lines:
        raise UserError(f"{where} holds no examples (it is empty)")
    parse = _json_pair if _is_jsonl(Path(where), lines[0][1]) else _tsv_pair
    pairs = [parse(Path(where), number, line, need_target) for number, line in lines]
    if need_target:
        labelled = [p.label is not None for p in pairs]
        if any(labelled) and not all(labelled):
            number = lines[labelled.index(False) if labelled[0] else labelled.index(True)][0]
            raise UserError(f"{where}:{number}: some lines have a \"label\" and some do not; give every line one "
                            "or none")
    return pairs


def label_vocabulary(pairs: Sequence[Pair]) -> tuple[int, tuple[str, ...]]:
    """(rows, names) of a label embedding for the labels of `pairs`: string labels are named rows in sorted
    order; integer labels are rows 0..max (no names). (0, ()) without labels; a mix is a UserError."""
    labels = {p.label for p in pairs if p.label is not None}
    if not labels:
        return 0, ()
    if all(isinstance(x, str) for x in labels):
        return len(labels), tuple(sorted(labels))
    if all(isinstance(x, int) for x in labels):
        if min(labels) < 0:
            raise UserError(f"integer condition labels must be >= 0, got {min(labels)}")
        return max(labels) + 1, ()
    raise UserError(f"the condition labels mix strings and integers ({', '.join(map(repr, sorted(labels, key=str)))})"
                    "; use one kind")


def read_pairs(path: str | os.PathLike, *, need_target: bool = True) -> list[Pair]:
    """All (source, target) pairs of a JSONL or TSV file. With `need_target=False` (inputs for generation) a
    JSONL line may omit "tgt", its "src" may be "" (or missing where it gives a "label": generate from
    nothing), and a TSV line without a tab is a source alone."""
    return parse_pairs(list(_lines(Path(path))), path, need_target=need_target)


def group_pairs(groups: Sequence[Sequence[str]]) -> list[Pair]:
    """(text, first synonym) of each group that has one: what a SimBERT dev set is scored on."""
    return [Pair(g[0], g[1]) for g in groups if len(g) >= 2]


def read_training_file(path: str | os.PathLike, objective: str) -> list[Any]:
    """The examples of a fine-tuning file: groups of similar sentences for `simbert`, pairs otherwise."""
    if LAYOUT.get(objective) == "simbert":
        from t5pegasus.pretrain.groups import read_groups

        return read_groups(path)
    return read_pairs(path)


# -- tokenized examples --------------------------------------------------------------------------------------------


def source_ids(tok: Tokenizer, text: str, max_source_len: int) -> list[int]:
    """`[CLS] src [SEP]` (`src </s>` without a bos token), truncated to `max_source_len` tokens."""
    return tok.add_special(tok.encode(text), max_source_len)


def seq2seq_example(tok: Tokenizer, pair: Pair, max_source_len: int, max_target_len: int) -> dict[str, np.ndarray]:
    """A T5 example: source and target, each wrapped in the tokenizer's special tokens."""
    return {"source": np.asarray(source_ids(tok, pair.src, max_source_len), np.int32),
            "target": np.asarray(tok.add_special(tok.encode(pair.tgt), max_target_len), np.int32)}


def prompt_example(tok: Tokenizer, pair: Pair, max_source_len: int, max_target_len: int) -> dict[str, np.ndarray]:
    """A GPT / UniLM example: `[CLS] src [SEP] tgt [SEP]` with segment ids 0 (source) and 1 (target);
    the target part (its end token included) has at most `max_target_len` tokens."""
    src = source_ids(tok, pair.src, max_source_len)
    tgt = tok.encode(pair.tgt)[: max(0, max_target_len - 1)] + [tok.eos_id]
    seg = [0] * len(src) + [1] * len(tgt)
    return {"ids": np.asarray(src + tgt, np.int32), "segment_ids": np.asarray(seg, np.int32)}


def check_labelled(cfg: Any, objective: str) -> None:
    """Condition labels need a model with a label embedding (a BERT, `num_conditions`) in the prompt layout."""
    if "num_conditions" not in type(cfg).field_names():
        raise UserError(f"condition labels (\"label\" in the data) need a model with conditional LayerNorm and a "
                        f"label embedding (BERT); a {cfg.family} model has none")
    if LAYOUT[objective] != "unilm":
        raise UserError(f"condition labels are read by the lm and unilm objectives, not {objective!r}")


def make_examples(tok: Tokenizer, pairs: Sequence[Pair], objective: str, max_source_len: int,
                  max_target_len: int, cfg: Any = None) -> Iterator[dict[str, np.ndarray]]:
    """Tokenized examples of `pairs` in the layout `objective` trains on (see the module docstring); labelled
    pairs also get their row of `cfg`'s label embedding."""
    make = seq2seq_example if LAYOUT[objective] == "seq2seq" else prompt_example
    for pair in pairs:
        example = make(tok, pair, max_source_len, max_target_len)
        if pair.label is not None:
            example[LABEL] = np.asarray([cfg.condition_index(pair.label)], np.int32)
        yield example


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare_pairs(path: str | os.PathLike, folder: str | os.PathLike, tok: Tokenizer, tokenizer_spec: dict[str, Any],
                  objective: str, max_source_len: int, max_target_len: int,
                  pairs: Sequence[Any] | None = None, cfg: Any = None) -> Path:
    """The prepared dataset of a pair file (`pairs`: its contents, when already read; groups for simbert), under
    `folder/<stem>-<hash of file, tokenizer, layout, lengths, label rows>`, written once (atomically) and reused.
    Labelled pairs store their rows of `cfg`'s label embedding (the model config that will train on them)."""
    from t5pegasus.pretrain.builder import write_dataset

    path = Path(path)
    task = LAYOUT[objective]
    pairs = read_training_file(path, objective) if pairs is None else pairs
    labelled = task != "simbert" and any(p.label is not None for p in pairs)
    keyed = {"file": file_digest(path), "tokenizer": tokenizer_spec["path"], "kind": tokenizer_spec["kind"],
             "task": task, "src": max_source_len, "tgt": max_target_len}
    if labelled:  # only then, so unlabelled datasets keep their key
        check_labelled(cfg, objective)
        keyed["labels"] = [cfg.num_conditions, list(cfg.condition_labels)]
    key = json.dumps(keyed, sort_keys=True)
    out = Path(folder) / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (out / "t5pegasus.json").is_file():
        return out
    if task == "simbert":
        from t5pegasus.pretrain.examples import ExampleConfig
        from t5pegasus.pretrain.groups import prepare_groups

        prepare_groups([str(path)], out, tok, tokenizer_spec, ExampleConfig(
            task=task, max_source_len=max_source_len, max_target_len=max_target_len,
            max_len=max_source_len + max_target_len), overwrite=True, groups=pairs)
        return out
    config = {"task": task, "max_source_len": max_source_len, "max_target_len": max_target_len,
              "max_len": max_source_len + max_target_len}
    metadata = {"inputs": [str(path.resolve())], "tokenizer": tokenizer_spec, "config": config,
                "stats": {"pairs read": len(pairs), "examples": len(pairs)}}
    if labelled:  # the rows the stored labels address (their names are the model config's condition_labels)
        metadata["condition_labels"] = cfg.num_conditions
    write_dataset(out, task, lambda: make_examples(tok, pairs, objective, max_source_len, max_target_len, cfg),
                  lambda: metadata, overwrite=True, extra_features=(LABEL,) if labelled else ())
    return out
