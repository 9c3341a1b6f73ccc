"""Adapter from a run config to the pretraining data pipeline (t5pegasus.pretrain / t5pegasus.text).

With `data.dataset` set, the prepared dataset(s) are used as they are. Otherwise the corpus is turned into a
held-out split (every n-th document), a WordPiece vocab (unless one is given) and two prepared datasets,
cached under `data.cache_dir/<hash of the settings>/` so a second run starts at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import jax

from t5pegasus.errors import UserError
from t5pegasus.fileio import write_text
from t5pegasus.training.runconfig import DataConfig


@dataclasses.dataclass(frozen=True)
class PreparedData:
    train: Path
    eval: Path | None
    metadata: dict[str, Any]  # the train dataset's t5pegasus.json (task, tokenizer special ids, lengths)

    @property
    def vocab_size(self) -> int:
        return int(self.metadata["tokenizer"]["vocab_size"])

    @property
    def special_ids(self) -> dict[str, int | None]:
        return self.metadata["tokenizer"]["special_ids"]

    @property
    def tokenizer_path(self) -> str:
        return self.metadata["tokenizer"]["path"]

    @property
    def tokenizer_kind(self) -> str | None:
        return self.metadata["tokenizer"].get("kind")


def _read_meta(path: Path) -> dict[str, Any]:
    from t5pegasus.pretrain.builder import read_metadata

    return read_metadata(path)


def _cache_key(cfg: DataConfig) -> str:
    fields = {k: getattr(cfg, k) for k in ("corpus", "vocab", "vocab_size", "task", "max_source_len",
                                            "max_target_len", "max_len", "eval_every_nth")}
    if cfg.tokenizer_kind:  # only when set, so the caches of runs that never set it keep their key
        fields["tokenizer_kind"] = cfg.tokenizer_kind
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def _write_split(cfg: DataConfig, folder: Path, say: Any) -> tuple[Path, Path]:
    from t5pegasus.pretrain.prepare import iter_source_documents

    corpus = [cfg.corpus] if isinstance(cfg.corpus, str) else list(cfg.corpus)
    train, held = [], []
    stats: Counter[str] = Counter()
    for i, doc in enumerate(iter_source_documents(corpus, stats, "blank")):
        # documents are separated by blank lines in the split files: fold inner blank lines away
        text = "\n".join(line for line in doc.splitlines() if line.strip())
        (held if cfg.eval_every_nth and i % cfg.eval_every_nth == cfg.eval_every_nth - 1 else train).append(text)
    if not train:
        raise UserError(f"the corpus {', '.join(corpus)} holds no documents")
    say(f"corpus: {len(train)} training and {len(held)} held-out documents")
    paths = folder / "train.txt", folder / "eval.txt"
    write_text(paths[0], "\n\n".join(train) + "\n")
    write_text(paths[1], "\n\n".join(held) + "\n")
    return paths


def _build_groups(cfg: DataConfig, folder: Path, say: Any) -> None:
    """The simbert task: the corpus is JSONL group files; every n-th group is held out."""
    from t5pegasus.pretrain.examples import ExampleConfig
    from t5pegasus.pretrain.groups import prepare_groups, read_groups
    from t5pegasus.text.load import check_kind, kind_for_file, load_tokenizer, tokenizer_spec
    from t5pegasus.text.vocab import build_wordpiece_vocab, save_vocab

    folder.mkdir(parents=True, exist_ok=True)
    if not cfg.corpus or cfg.corpus == "peoples-daily":
        raise UserError("data.task simbert reads JSONL groups of similar sentences ({\"text\": ..., \"synonyms\": "
                        "[...]}): give data.corpus=GROUPS.jsonl, or data.dataset=DIR from `t5pegasus prepare --task "
                        "simbert`")
    corpus = [cfg.corpus] if isinstance(cfg.corpus, str) else list(cfg.corpus)
    read = [g for path in corpus for g in read_groups(path)]
    nth = cfg.eval_every_nth
    held = [g for i, g in enumerate(read) if nth and i % nth == nth - 1]
    train = [g for i, g in enumerate(read) if not (nth and i % nth == nth - 1)]
    say(f"corpus: {len(train)} training and {len(held)} held-out groups of similar sentences")
    vocab = Path(cfg.vocab) if cfg.vocab else folder / "vocab.txt"
    if not cfg.vocab and not vocab.exists():
        say(f"building a {cfg.vocab_size}-token WordPiece vocabulary (characters + jieba words)…")
        save_vocab(build_wordpiece_vocab([s for g in train for s in g], cfg.vocab_size, min_count=2), vocab)
    kind = check_kind(cfg.tokenizer_kind or kind_for_file(vocab))
    tok = load_tokenizer(vocab, kind=kind)
    ex = ExampleConfig(task=cfg.task, max_source_len=cfg.max_source_len, max_target_len=cfg.max_target_len,
                       max_len=cfg.max_len)
    for name, part in (("train", train), ("eval", held)):
        if part and not (folder / name).exists():
            prepare_groups(corpus, folder / name, tok, tokenizer_spec(vocab, tok, kind), ex, groups=part)


def _build(cfg: DataConfig, folder: Path, say: Any) -> None:
    if cfg.task == "simbert":
        return _build_groups(cfg, folder, say)
    from t5pegasus.pretrain.examples import ExampleConfig
    from t5pegasus.pretrain.prepare import prepare_dataset
    from t5pegasus.text.load import check_kind, kind_for_file, load_tokenizer, tokenizer_spec
    from t5pegasus.text.vocab import build_wordpiece_vocab, save_vocab

    folder.mkdir(parents=True, exist_ok=True)
    train_txt, eval_txt = _write_split(cfg, folder, say)
    vocab = Path(cfg.vocab) if cfg.vocab else folder / "vocab.txt"
    if not cfg.vocab and not vocab.exists():
        say(f"building a {cfg.vocab_size}-token WordPiece vocabulary (characters + jieba words)…")
        docs = train_txt.read_text(encoding="utf-8").split("\n\n")
        save_vocab(build_wordpiece_vocab(docs, cfg.vocab_size, min_count=2), vocab)
    kind = check_kind(cfg.tokenizer_kind or kind_for_file(vocab))
    tok = load_tokenizer(vocab, kind=kind)
    ex = ExampleConfig(task=cfg.task, max_source_len=cfg.max_source_len, max_target_len=cfg.max_target_len,
                       max_len=cfg.max_len)
    for name, txt in (("train", train_txt), ("eval", eval_txt)):
        if (folder / name).exists() or not txt.read_text(encoding="utf-8").strip():
            continue
        say(f"preparing the {name} examples ({cfg.task})…")
        prepare_dataset([str(txt)], folder / name, tok, tokenizer_spec(vocab, tok, kind), ex, doc_sep="blank",
                        progress=False)


def prepare(cfg: DataConfig, say: Any = print) -> PreparedData:
    """The train (and held-out) datasets for `cfg`, built and cached on first use."""
    if cfg.dataset:
        train = Path(cfg.dataset)
        held = Path(cfg.eval_dataset) if cfg.eval_dataset else None
        for p in (train, held):
            if p is not None and not (p / "t5pegasus.json").is_file():
                raise UserError(f"{p} is not a prepared dataset (make one with `t5pegasus prepare`)")
        return PreparedData(train, held, _read_meta(train))
    folder = Path(cfg.cache_dir) / f"data-{_cache_key(cfg)}"
    if jax.process_index() == 0 and not (folder / "train").exists():
        _build(cfg, folder, say)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("t5pegasus data prepared")
        if not (folder / "train").exists():  # no shared file system: every host builds the same files
            _build(cfg, folder, say)
    held = folder / "eval" if (folder / "eval").exists() else None
    return PreparedData(folder / "train", held, _read_meta(folder / "train"))


def loader(path: Path, cfg: DataConfig, *, seed: int, shuffle: bool, max_lengths: dict[str, int],
           pack: dict[str, int] | None = None, rows: list[int] | None = None) -> Any:
    """This process's batch iterator: its `rows` of each global batch of `data.batch_size` (default: its
    contiguous block; the loop passes the rows its devices hold, `mesh.process_rows`); `pack` (row lengths by
    name, {} for the example lengths): packed rows."""
    from t5pegasus.pretrain.loader import make_dataset

    n = jax.process_count()
    if rows is None and cfg.batch_size % n:
        raise UserError(f"data.batch_size {cfg.batch_size} does not split over {n} processes")
    packed = {} if pack is None else {"pack": True, "pack_lengths": pack or None}
    return make_dataset(path, batch_size=cfg.batch_size, seed=seed, shuffle=shuffle, rows=rows, **max_lengths,
                        **packed)
