"""Checkpoint formats on disk: telling SRC's format (`detect`) and the tokenizer files shipped with an export."""

from __future__ import annotations

from pathlib import Path

from t5pegasus.errors import UserError

FORMATS = ("run", "hf", "tf", "megatron")
TOKENIZER_FILES = {".txt": "vocab.txt", ".model": "spiece.model"}


def detect(path: Path) -> str:
    """The format of an existing source path, or a UserError saying what was expected."""
    from t5pegasus.convert.run import is_run_dir
    from t5pegasus.convert.tf_checkpoint import is_tf_checkpoint

    if is_tf_checkpoint(path):  # before hf: the T5 PEGASUS release has a config.json beside its checkpoint
        return "tf"
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if is_run_dir(path):
        return "run"
    if (path / "config.json").is_file():
        return "hf"
    if (path / "latest_checkpointed_iteration.txt").exists() or any(path.glob("**/mp_rank_*_model_states.pt")):
        return "megatron"
    raise UserError(f"cannot tell the format of {path}; give it with --from ({', '.join(FORMATS)})")


def tokenizer_files(src: Path, src_format: str, tokenizer: str | None = None) -> dict[str, Path]:
    """{name in the export: file} for the tokenizer to ship: `tokenizer` (--tokenizer), else a run's own."""
    path = tokenizer
    if path is None and src_format == "run" and (src / "tokenizer.txt").is_file():
        path = (src / "tokenizer.txt").read_text(encoding="utf-8").strip() or None
    if path is None:
        return {}
    path = Path(path)
    name = TOKENIZER_FILES.get(path.suffix)
    if name is None or not path.is_file():
        if tokenizer is None:
            return {}  # a run whose tokenizer is not a single vocab/model file: nothing to ship
        raise UserError(f"--tokenizer {path}: expected an existing vocab.txt or sentencepiece .model file")
    return {name: path}
