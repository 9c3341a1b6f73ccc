"""What a path on disk holds (`detect`): the one rule, for `convert` and every command that takes a model folder,
and the tokenizer files an export ships."""

from __future__ import annotations

from pathlib import Path

from t5pegasus.errors import UserError
from t5pegasus.training.run_folder import RunFolder

FORMATS = ("run", "hf", "tf", "megatron")
TOKENIZER_FILES = {".txt": "vocab.txt", ".model": "spiece.model"}
WHAT_A_MODEL_FOLDER_IS = ("a training run (model_config.json + checkpoints/), a fine-tuned model (<run>/best), "
                          "a HF transformers folder (config.json + model.safetensors), a TF checkpoint (checkpoint "
                          "+ model.ckpt.index, as the T5 PEGASUS release) or a Megatron checkpoint")


def model_dir(path: str | Path) -> RunFolder:
    """The folder a model path stands for: the path itself, or a TF checkpoint prefix's folder."""
    path = Path(path)
    return RunFolder(path if path.is_dir() else path.parent)


def detect(path: Path) -> str:
    """The format of an existing model path (one of FORMATS), or a UserError saying what a model folder is.

    A TF checkpoint is looked for first: the T5 PEGASUS release keeps a bert4keras `config.json` beside its
    checkpoint, which would otherwise read as a HF folder. A fine-tuning run whose checkpoints were deleted
    but whose `best/` remains is still a run."""
    from t5pegasus.convert.tf_checkpoint import is_tf_checkpoint

    path = Path(path)
    if is_tf_checkpoint(path):
        return "tf"
    if not path.exists():
        raise UserError(f"model folder {path} does not exist")
    if RunFolder.holds_run(path) or RunFolder.holds_run(RunFolder(path).best.path):
        return "run"
    if (path / "config.json").is_file():
        return "hf"
    if (path / "latest_checkpointed_iteration.txt").exists() or any(path.glob("**/mp_rank_*_model_states.pt")):
        return "megatron"
    raise UserError(f"{path} is not a model folder: expected {WHAT_A_MODEL_FOLDER_IS}")


def record_tokenizer(folder: Path, shipped: dict[str, Path], kind: str | None) -> None:
    """Record in an export `folder` the kind of the tokenizer file it ships (`tokenizer.txt` naming it, as a
    run folder does), so every command reading the export cuts text as the model was trained to."""
    names = [name for name in shipped if name in TOKENIZER_FILES.values()]
    if kind and names:
        RunFolder(folder).write_tokenizer_record(names[0], kind)


def tokenizer_files(src: Path, src_format: str, tokenizer: str | None = None) -> dict[str, Path]:
    """{name in the export: file} for the tokenizer to ship: `tokenizer` (--tokenizer), else the source's own (a
    run's recorded tokenizer, or a vocab.txt / sentencepiece model in a TF, HF or Megatron folder)."""
    if tokenizer is None:
        try:
            path = model_dir(src).tokenizer_file()
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
