"""Deterministic, resumable batches from a prepared dataset, with grain: this process's rows of each global batch.

Order: the global example list is shuffled by `seed` (a fresh permutation each epoch), repeated for
`num_epochs` (None = forever) and cut into global batches of `batch_size`; a process reads its rows of each
global batch (by default process p of k its contiguous block p), so the global batch is the same whatever
the process count. Examples become fixed-shape int32 arrays (see docs/data.md), padded per batch, or packed
several to a row with grain's best-fit packing (segment ids 1, 2, ... per example, positions from 0 per
example). SimBERT groups (`t5pegasus.pretrain.groups`) give one pair each, drawn per epoch from the seed, and
a global batch holds every pair of it in both orders. `BatchIterator.get_state()` is a JSON-able, global dict;
`set_state` resumes at exactly the next batch, on any process count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from t5pegasus.errors import UserError
from t5pegasus.pretrain import groups
from t5pegasus.pretrain.builder import open_source, read_metadata
from t5pegasus.pretrain.examples import LABEL


def _row(seq: np.ndarray, length: int, pad: int) -> np.ndarray:
    out = np.full(length, pad, np.int32)
    seq = seq[:length]
    out[: len(seq)] = seq
    return out


class _Shaper:
    """Stored example -> model fields (unpadded), and a padded batch of them."""

    def __init__(self, meta: dict[str, Any], max_source_len: int | None, max_target_len: int | None,
                 max_len: int | None) -> None:  # fmt: skip
        cfg, special = meta["config"], meta["tokenizer"]["special_ids"]
        self.task = meta["task"]
        self.pad = int(special["pad"])
        self.start = int(special["decoder_start"])
        self.has_bos = special["bos"] is not None
        s = max_source_len or cfg["max_source_len"]
        t = max_target_len or cfg["max_target_len"]
        self.first_pair_id = 0
        if self.task == "simbert":
            if special["bos"] is None:
                raise UserError("SimBERT rows start with [CLS]: the dataset's tokenizer has no bos/[CLS] token")
            self.cls, self.sep = int(special["bos"]), int(special["eos"])
            self.cut = (s - 2, t - 1)  # a in [CLS] a [SEP], b in b [SEP]
        if self.task in ("seq2seq", "pegasus"):
            self.lengths = {"encoder_ids": s, "decoder_ids": t, "targets": t}
        elif self.task == "lm":
            n = (max_len or cfg["max_len"]) - 1
            self.lengths = {"ids": n, "targets": n}
        else:
            n = max_len or (s + t)
            self.lengths = {"ids": n, "segment_ids": n, "targets": n, "weights": n}

    def __call__(self, ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.task in ("seq2seq", "pegasus"):
            tgt = np.asarray(ex["target"], np.int32)
            if self.has_bos:  # [CLS] t1 .. [SEP]: decoder reads [CLS] t1 .., predicts t1 .. [SEP]
                dec, out = tgt[:-1], tgt[1:]
            else:  # mT5: decoder reads pad t1 .., predicts t1 .. </s>
                dec, out = np.concatenate([[self.start], tgt[:-1]]).astype(np.int32), tgt
            return {"encoder_ids": np.asarray(ex["source"], np.int32), "decoder_ids": dec, "targets": out}
        if self.task == "simbert":
            return {"first": ex["first"][: self.cut[0]], "second": ex["second"][: self.cut[1]]}
        ids = np.asarray(ex["ids"], np.int32)
        if self.task == "lm":
            return {"ids": ids[:-1], "targets": ids[1:]}
        seg = np.asarray(ex["segment_ids"], np.int32)
        targets = np.append(ids[1:], self.pad).astype(np.int32)
        weights = np.append(seg[1:], 0).astype(np.int32)  # predict the next token when it is target text
        out = {"ids": ids, "segment_ids": seg, "targets": targets, "weights": weights}
        if LABEL in ex:  # a fine-tuning pair's condition label: its row of the label embedding
            out[LABEL] = np.asarray(ex[LABEL], np.int32)[:1]
        return out

    KINDS = {"encoder_ids": "source", "decoder_ids": "target", "ids": "length"}  # field -> its length's name

    def truncate(self, ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Cut an example's fields to the example lengths (what a padded row keeps)."""
        return {k: v[: self.lengths[k]] if k in self.lengths else v for k, v in ex.items()}

    def row_lengths(self, given: dict[str, int]) -> dict[str, int]:
        """Packed row length of every field, from {"source"/"target"/"length": n} (default the example's)."""
        kinds = {"targets": self.KINDS["decoder_ids" if "decoder_ids" in self.lengths else "ids"], **self.KINDS}
        wanted = sorted({kinds[k] for k in self.lengths})
        unknown = sorted(set(given) - set(wanted))
        if unknown:
            raise UserError(f"packed row lengths {', '.join(unknown)} do not apply to {self.task} examples; "
                            f"give {' and '.join(wanted)}")
        rows = {k: int(given.get(kinds[k], n)) for k, n in self.lengths.items()}
        short = [f"{kinds[k]} {rows[k]} < {n}" for k, n in self.lengths.items() if rows[k] < n]
        if short:
            raise UserError(f"packed rows must hold the longest example ({', '.join(sorted(set(short)))})")
        return rows

    def batch(self, rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if self.task == "simbert":
            out = groups.pair_rows([(r["first"], r["second"]) for r in rows], self.cls, self.sep, self.pad,
                                   self.lengths["ids"], self.first_pair_id)
            out.pop("mask")
            return out
        out = {}
        for name, length in self.lengths.items():
            pad = 0 if name in ("segment_ids", "weights") else self.pad
            out[name] = np.stack([_row(r[name], length, pad) for r in rows])
        if LABEL in rows[0]:
            out[LABEL] = np.stack([r[LABEL] for r in rows])  # [b, 1]
        return self.finish(out, {name: [min(len(r[name]), n) for r in rows] for name, n in self.lengths.items()})

    def finish(self, b: dict[str, np.ndarray], lens: dict[str, list[int]]) -> dict[str, np.ndarray]:
        """Add the masks from the true lengths."""

        def mask(name: str) -> np.ndarray:
            n = self.lengths[name]
            return (np.arange(n)[None, :] < np.asarray(lens[name])[:, None]).astype(np.int32)

        if self.task in ("seq2seq", "pegasus"):
            b["encoder_mask"] = mask("encoder_ids")
            b["target_mask"] = mask("targets")
            b["weights"] = b["target_mask"]
        elif self.task == "lm":
            b["weights"] = mask("targets")
        return b


class BatchIterator:
    """Iterator of batches (dicts of int32 numpy arrays) with a JSON-able, restorable position.

    The position is global: it counts the global batches read (with packing, also grain's packer state, the
    same on every process), so it restores on any process count and any rows of the batch.
    """

    def __init__(self, open_at: Callable[[dict[str, Any]], Iterator[dict[str, np.ndarray]]],
                 metadata: dict[str, Any], *, packed: bool, legacy: Callable[[dict[str, Any]], dict[str, Any]]
                 ) -> None:  # fmt: skip
        self._open_at = open_at
        self._packed = packed
        self._legacy = legacy
        self._batches = 0
        self._it = open_at({"batches": 0})
        self.metadata = metadata

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        self._batches += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """The position after the last batch returned (save it with the model checkpoint)."""
        state: dict[str, Any] = {"batches": self._batches}
        if self._packed:
            state["packing"] = self._it.get_state()
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a saved position: the next batch is the one after the saved one."""
        if "batches" not in state:
            state = self._legacy(state)
        if self._packed and "packing" not in state:
            raise UserError("the saved data position is of unpacked batches; resume with data.pack=false")
        if not self._packed and "packing" in state:
            raise UserError("the saved data position is of packed batches; resume with data.pack=true")
        self._it = self._open_at(state)
        self._batches = int(state["batches"])


def block_rows(batch_size: int, process_index: int, process_count: int) -> list[int]:
    """Process p of k's contiguous block of a global batch: rows p*B/k .. (p+1)*B/k - 1."""
    if not 0 <= process_index < process_count:
        raise UserError(f"process index {process_index} is outside 0..{process_count - 1}")
    if batch_size % process_count:
        raise UserError(f"the batch size {batch_size} does not split over {process_count} processes")
    n = batch_size // process_count
    return list(range(process_index * n, (process_index + 1) * n))


def make_dataset(
    path: str | os.PathLike,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    rows: Sequence[int] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    max_source_len: int | None = None,
    max_target_len: int | None = None,
    max_len: int | None = None,
    pack: bool = False,
    pack_lengths: dict[str, int] | None = None,
    drop_remainder: bool = True,
) -> BatchIterator:
    """`rows` of every global batch of `batch_size` (default: this process's contiguous block, process
    `jax.process_index()` of `process_count()`), so any split of a batch over processes reads the same batches.

    Without packing a process reads only the examples of its rows (random access to the shuffled stream).
    With packing every process packs the whole global stream the same way and keeps its rows (a packed row
    depends on every example before it); SimBERT rows hold a pair in either order, so every process makes
    the whole global batch's pairs and keeps its rows too. `pack`: several examples per row; the rows are
    `pack_lengths` long ("source"/"target" for seq2seq, "length" otherwise; default: the example lengths).
    Examples are cut to the example lengths first.
    """
    import grain
    import grain.experimental as gx

    if batch_size < 1:
        raise UserError("batch size must be at least 1")
    if rows is None:
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        rows = block_rows(batch_size, process_index, process_count)
    rows = [int(r) for r in rows]
    if not rows or min(rows) < 0 or max(rows) >= batch_size or sorted(set(rows)) != rows:
        raise UserError(f"the rows to read must be ascending, distinct and within the batch of {batch_size}")
    meta = read_metadata(path)
    shaper = _Shaper(meta, max_source_len, max_target_len, max_len)
    if pack and shaper.task in ("unilm", "simbert"):
        raise UserError("packing is not available for UniLM examples (their segment ids are the attention mask)")
    if pack and meta.get("condition_labels"):
        raise UserError("packing is not available for examples with condition labels (a label conditions a whole "
                        "row); set data.pack=false")
    examples = grain.MapDataset.source(open_source(path))
    if shuffle:
        examples = examples.shuffle(seed=seed)
    examples = examples.repeat(num_epochs)
    if shaper.task == "simbert":  # drawn by the global index: the same pairs whatever the process count
        examples = examples.random_map(groups.choose_pair, seed=seed)
    examples = examples.map(shaper)
    total = len(examples)
    row_at = np.asarray(rows, np.int64)

    def keep(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v[row_at[row_at < len(v)]] for k, v in b.items()}

    def unpacked(state: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
        start = int(state["batches"])
        if shaper.task == "simbert":  # each example (a pair) gives two rows: make them all, keep ours
            pairs = groups.pairs_per_batch(batch_size)
            batches = total // pairs if drop_remainder else -(-total // pairs)
            ds = grain.MapDataset.range(start * pairs, min(batches * pairs, total)).map(lambda g: examples[g])
            return iter(ds.to_iter_dataset().batch(pairs, drop_remainder=drop_remainder, batch_fn=shaper.batch)
                        .map(keep))
        # local example t is row rows[t % width] of global batch t // width
        width = len(rows)
        batches = total // batch_size if drop_remainder else -(-total // batch_size)
        flat = grain.MapDataset.range(start * width, batches * width)
        flat = flat.map(lambda t: int(t // width) * batch_size + int(row_at[t % width]))
        if not drop_remainder:
            flat = flat.filter(lambda g: g < total)
        return iter(flat.map(lambda g: examples[g]).to_iter_dataset()
                    .batch(width, drop_remainder=drop_remainder, batch_fn=shaper.batch))

    def packed(state: dict[str, Any]) -> Any:
        lengths = shaper.row_lengths(pack_lengths or {})
        # More bins than rows per batch fill better (64 bins: 95% of the demo's seq2seq slots in rows 4
        # examples long, against 93% with 16); the bins are emitted in order, so the stream stays resumable.
        ds = gx.BestFitPackIterDataset(examples.to_iter_dataset().map(shaper.truncate), length_struct=lengths,
                                       num_packing_bins=max(64, batch_size), shuffle_bins=False)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=_packed_batch(shaper))
        it = iter(ds.map(keep))
        if "packing" in state:
            it.set_state(state["packing"])
        return it

    def legacy(state: dict[str, Any]) -> dict[str, Any]:
        # t5pegasus before global positions saved grain's count of one process's examples
        if pack or "next_index" not in state:
            raise UserError(f"unknown data position {state}; start a new run (name=NEW_NAME)")
        per_batch = groups.pairs_per_batch(batch_size) if shaper.task == "simbert" else batch_size
        return {"batches": int(state["next_index"]) // per_batch}

    return BatchIterator(packed if pack else unpacked, meta, packed=pack, legacy=legacy)


def _packed_batch(shaper: _Shaper):
    """Packed rows -> batch: grain's `<name>_segment_ids` / `<name>_positions` become our field names."""

    def fn(rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        b = {k: np.stack([np.asarray(r[k], np.int32) for r in rows]) for k in rows[0]}
        out: dict[str, np.ndarray] = {}
        if shaper.task in ("seq2seq", "pegasus"):
            out["encoder_ids"], out["decoder_ids"], out["targets"] = (
                b["encoder_ids"],
                b["decoder_ids"],
                b["targets"],
            )
            out["encoder_segment_ids"] = b["encoder_ids_segment_ids"]
            out["encoder_positions"] = b["encoder_ids_positions"]
            out["decoder_segment_ids"] = b["decoder_ids_segment_ids"]
            out["decoder_positions"] = b["decoder_ids_positions"]
            out["encoder_mask"] = (out["encoder_segment_ids"] > 0).astype(np.int32)
            out["target_mask"] = (out["decoder_segment_ids"] > 0).astype(np.int32)
            out["weights"] = out["target_mask"]
        else:
            out["ids"], out["targets"] = b["ids"], b["targets"]
            out["segment_ids"] = b["ids_segment_ids"]
            out["positions"] = b["ids_positions"]
            out["weights"] = (out["segment_ids"] > 0).astype(np.int32)
        return out

    return fn
