"""Which format a path on disk holds (`detect`), and the tokenizer files an export ships."""

from __future__ import annotations

from pathlib import Path

from t5pegasus.errors import UserError
from t5pegasus.training.run_folder import RunFolder

FORMATS = ("run", "hf", "tf", "megatron")
TOKENIZER_FILES = {".txt": "vocab.txt", ".model": "spiece.model"}


def detect(path: Path) -> str:
    """The format of an existing source path, or a UserError saying what was expected."""
    from t5pegasus.convert.tf_checkpoint import is_tf_checkpoint

    if is_tf_checkpoint(path):  # before hf: the T5 PEGASUS release has a config.json beside its checkpoint
        return "tf"
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if RunFolder.holds_run(path):
        return "run"
    if (path / "config.json").is_file():
        return "hf"
    if (path / "latest_checkpointed_iteration.txt").exists() or any(path.glob("**/mp_rank_*_model_states.pt")):
        return "megatron"
    raise UserError(f"cannot tell the format of {path}; give it with --from ({', '.join(FORMATS)})")


def tokenizer_files(src: Path, src_format: str, tokenizer: str | None = None) -> dict[str, Path]:
    """{name in the export: file} for the tokenizer to ship: `tokenizer` (--tokenizer), else the source's own (a
    run's recorded tokenizer, or a vocab.txt / sentencepiece model in a TF, HF or Megatron folder)."""
    if tokenizer is None:
        folder = src if src.is_dir() else src.parent  # a TF checkpoint may be given by its prefix
        try:
            path = RunFolder(folder).tokenizer_file()
        except UserError:
            return {}  # the source ships no single vocab/model file: nothing to copy
    else:
        path = Path(tokenizer)
    name = TOKENIZER_FILES.get(path.suffix)
    if name is None or not path.is_file():
        if tokenizer is None:
            return {}
        raise UserError(f"--tokenizer {path}: expected an existing vocab.txt or sentencepiece .model file")
    return {name: path}
