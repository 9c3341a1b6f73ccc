"""`model.init=DIR`: a pretraining run that starts from a model folder's weights instead of a random init.

The model section then comes from DIR's config (a HF mT5, a run, a TF release folder: whatever
`model_folder.load_model` reads); `model.*` keys set beside `init` still apply (dropout, remat, attention
backend: anything that keeps the parameter shapes). `data.vocab` defaults to DIR's own tokenizer; a different
one re-vocabularises the model (`revocab`: its tokens keep, average or newly draw their rows) and the counts are
printed and kept in the run folder (`RunFolder.revocab_report`).

A run that has checkpoints resumes from them: DIR is not read again and nothing is re-initialised; the model
section is the one the run started with (a changed `model.*` is then refused by the loop's resume check).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from t5pegasus.errors import UserError
from t5pegasus.training import runconfig
from t5pegasus.training.run_folder import RunFolder


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two tokenizer files hold the same bytes (the same vocabulary under two names)."""
    a, b = Path(a), Path(b)
    if not a.is_file():
        raise UserError(f"data.vocab {a} not found (give a vocab.txt or a sentencepiece .model)")
    return a.resolve() == b.resolve() or (a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes())


def resolve_init(values: dict[str, Any], say: Callable[[str], None] = print, *, with_weights: bool = True
                 ) -> tuple[runconfig.RunConfig, Callable[[], Any] | None]:
    """A run config's values with `model.init` resolved -> (validated RunConfig, initial params or None).

    Without `model.init` the values are validated as they are. The initial params are None when the run resumes
    from its checkpoints (or `with_weights` is False, for `--print-config`); otherwise a function that hands the
    weights over once (so the loaded copy is freed when the train state holds them).
    """
    model = dict(values.get("model") or {})
    init = model.pop("init", None)
    if init is None:
        return runconfig.from_dict(values), None
    if not isinstance(init, str) or not init:
        raise UserError(f"model.init must be a model folder path, not {init!r}")
    given = sorted(k for k in ("family", "preset") if k in model)
    if given:
        raise UserError(f"model.init takes the family and architecture from {init}; drop "
                        f"model.{' and model.'.join(given)}")
    init = str(Path(init).absolute())
    probe = runconfig.from_dict({**values, "model": None})  # every other section, validated
    run = RunFolder(probe.run_dir.absolute())
    saved = run.run_config() if run.latest_step() is not None else None
    vocab = probe.data.vocab
    initial: Callable[[], Any] | None = None
    if saved and isinstance(saved.get("model"), dict) and saved["model"].get("init"):
        # a resume: the model the run started with, its checkpoint holds the weights
        base = {k: v for k, v in saved["model"].items() if k != "init"}
        vocab = vocab or (saved.get("data") or {}).get("vocab")
    else:
        base, vocab, initial = _start(init, vocab, probe, run, say, with_weights)
    values = runconfig.merge(values, {"data": {"vocab": vocab}})
    values["model"] = {**runconfig.merge(base, model), "init": init}
    return runconfig.from_dict(values), initial


def _start(init: str, vocab: str | None, probe: runconfig.RunConfig, run: RunFolder, say: Callable[[str], None],
           with_weights: bool) -> tuple[dict[str, Any], str, Callable[[], Any] | None]:
    """(model section, data.vocab, initial params) of a run starting from the folder `init`."""
    from t5pegasus.convert.model_folder import load_model, model_section
    from t5pegasus.convert.revocab import new_config, revocab
    from t5pegasus.text.load import load_tokenizer
    from t5pegasus.training.loop import vocab_rows

    say(f"loading {init}…")
    loaded = load_model(init, with_params=with_weights)
    if vocab is None or same_file(vocab, loaded.tokenizer_path):
        vocab = vocab or str(loaded.tokenizer_path)
        cfg, params = loaded.cfg, loaded.params
    else:
        new_tok = load_tokenizer(vocab)  # the kind the data pipeline reads it as (by its suffix)
        if not with_weights:
            return model_section(new_config(loaded.cfg, new_tok, vocab_rows(new_tok.vocab_size))), vocab, None
        result = revocab(loaded.cfg, loaded.params, loaded.tokenizer, new_tok, rows=vocab_rows(new_tok.vocab_size),
                         seed=probe.seed)
        say(f"re-vocabularised {init} to {vocab}: {result.report.summary()}")
        run.write_revocab_report({"init": init, "old_tokenizer": str(loaded.tokenizer_path),
                                  "vocab": str(Path(vocab).absolute()), **result.report.to_dict()})
        cfg, params = result.cfg, result.params
    holder = {"params": params}

    def initial() -> Any:
        return holder.pop("params")

    return model_section(cfg), vocab, initial if with_weights else None
