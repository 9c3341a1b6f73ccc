"""The tiny T5 pretraining run the loop tests share: a 40-document People's Daily corpus and the run config
keys of a 1+1-layer model on a data=2 x fsdp mesh; each test adds the keys it is about."""

from pathlib import Path


def write_corpus(folder: Path, documents: int = 40) -> Path:
    """`folder/docs.txt` with the first `documents` People's Daily articles, blank-line separated."""
    from t5pegasus.pretrain.corpora import iter_peoples_daily_documents

    docs = [doc for _, doc in zip(range(documents), iter_peoples_daily_documents(), strict=False)]
    (folder / "docs.txt").write_text("\n\n".join(docs), encoding="utf-8")
    return folder


def overrides(corpus: Path, out: Path, name: str = "run", **extra: object) -> list[str]:
    """`key=value` overrides of the tiny run in `out/name` on `corpus` (from `write_corpus`), plus `extra`."""
    values = {
        "name": name, "output_dir": str(out), "model.preset": "tiny", "model.d_model": 32, "model.d_ff": 64,
        "model.num_heads": 2, "model.d_kv": 8, "model.num_encoder_layers": 1, "model.num_decoder_layers": 1,
        "data.corpus": str(corpus / "docs.txt"), "data.vocab_size": 600, "data.max_source_len": 48,
        "data.max_target_len": 16, "data.batch_size": 8, "data.eval_every_nth": 10,
        "data.cache_dir": str(corpus / "cache"), "log.tensorboard": False, "log.peak_flops": 1e9,
        "optim.learning_rate": 3e-3, "optim.points": "{2: 1.0}", "mesh.rules": "fsdp", "mesh.data": 2,
        "mesh.fsdp": -1,
    }  # fmt: skip
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def train_lines(run_dir: Path) -> int:
    """How many train lines the run in `run_dir` has logged to its metrics.jsonl so far."""
    metrics = run_dir / "metrics.jsonl"
    return metrics.read_text().count('"kind": "train"') if metrics.exists() else 0
