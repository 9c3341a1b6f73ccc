"""(config, params) -> a HF transformers folder: config.json, model.safetensors, generation_config.json, and the
remote code (`hf_remote/`) for what HF's own classes lack.

The folder is written to a temporary name and renamed into place, so a failed export leaves nothing behind
and an existing folder is replaced only with `overwrite=True`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from t5pegasus import families, fileio
from t5pegasus.config import ConfigBase, nondefault_attention_switches
from t5pegasus.errors import UserError

OUR_CONFIG_KEY = "t5pegasus_config"
EXACT_SIDECAR = "t5pegasus_exact.safetensors"
# Code for HF transformers shipped into exports (package data: self-contained modules run by transformers).
REMOTE_CODE = Path(__file__).with_name("hf_remote")
_REMOTE_TOKENIZER = ("tokenization_t5pegasus", "T5PegasusTokenizer")  # for a WordPiece vocab.txt


def _plain(params: Any) -> Any:
    from t5pegasus.models import unbox
    from t5pegasus.models.layers import unstack_layers

    return unstack_layers(unbox(params))


def save_hf(cfg: ConfigBase, params: Any, folder: str | os.PathLike, *, allow_lossy: bool = False,
            overwrite: bool = False, dtype: str = "float32", extra_files: dict[str, str | os.PathLike] | None = None,
            report: Callable[[str], None] = print) -> Path:
    """Write a folder that `transformers.AutoModel*.from_pretrained` loads with no missing or unexpected keys.

    What HF's own classes lack but the family's remote code adds (the T5 PEGASUS cross-attention position
    bias) is exact with `trust_remote_code=True`: the code is copied into the folder, and what a plain load
    loses is reported with its measured effect. What nothing here can express (attention switches such as
    RoPE or RealFormer) is refused unless `allow_lossy`, and then reported. T5 PEGASUS's logit scale is folded
    into the head and erf GELU maps to `gated-gelu_python`, both exact. `extra_files` maps names in the folder
    to files to copy there (tokenizer files: vocab.txt, spiece.model, ...); a vocab.txt also gets the T5
    PEGASUS tokenizer as remote code (`tokenization_t5pegasus.py`).
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise UserError(f"{folder} exists; choose another destination or allow overwriting (--force)")
    fmt = families.of(cfg).converter("hf")
    params = _plain(params)
    switches = nondefault_attention_switches(cfg)
    lost = [f"attention switches {switches} that HF's {cfg.family} models do not have"] if switches else []
    family_loss = fmt.lossy(cfg)
    remote = fmt.remote_code(cfg) if family_loss else None
    if family_loss and remote is None:
        lost.append(family_loss)
    if lost and not allow_lossy:
        raise UserError(f"this model has {'; and '.join(lost)}; pass allow_lossy=True (--allow-lossy) to export "
                        "it without what HF cannot hold")
    effect = fmt.loss_effect(cfg, params) if family_loss and fmt.loss_effect else None  # only now it goes ahead
    for what in lost:
        report(f"lossy export: {what}{f': {effect}' if what == family_loss and effect else ''}")
    if remote is not None:
        report(f"exact with trust_remote_code=True ({remote.file}); loaded without it, as HF's own class, it "
               f"lacks {family_loss}{f': {effect}' if effect else ''}")
    hf_config = fmt.config_to_hf(cfg)
    if remote is not None:
        hf_config.update(remote.config)
    raw = fmt.params_to_hf(cfg, params)
    tensors = {k: np.ascontiguousarray(v.astype(np.dtype(dtype) if dtype != "bfloat16" else np.float32))
               for k, v in raw.items()}
    if dtype == "bfloat16":
        import ml_dtypes

        tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
    hf_config["torch_dtype"] = dtype
    # Our own config travels in config.json (HF ignores the key) so a re-import restores every switch.
    hf_config[OUR_CONFIG_KEY] = cfg.to_dict()
    exact = fmt.exact_tensors(cfg, params)  # kept beside the HF tensors for a bit-exact re-import
    generation = {k: hf_config[k] for k in ("decoder_start_token_id", "eos_token_id", "pad_token_id", "bos_token_id")
                  if hf_config.get(k) is not None}
    extra = dict(extra_files or {})
    with fileio.atomic_dir(folder, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
        if exact:
            save_file(exact, str(tmp / EXACT_SIDECAR))
        if remote is not None:
            shutil.copyfile(REMOTE_CODE / remote.file, tmp / remote.file)
        for name, source in extra.items():
            if not Path(source).is_file():
                raise UserError(f"{source} (to be saved as {name}) is not a file")
            shutil.copyfile(source, tmp / name)
        if "vocab.txt" in extra and "tokenizer_config.json" not in extra:
            tokenizer_config = _wordpiece_tokenizer_config(cfg, hf_config)
            (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
            shutil.copyfile(REMOTE_CODE / f"{_REMOTE_TOKENIZER[0]}.py", tmp / f"{_REMOTE_TOKENIZER[0]}.py")
    return folder


def _wordpiece_tokenizer_config(cfg: Any, hf_config: dict[str, Any]) -> dict[str, Any]:
    """HF tokenizer settings for a WordPiece vocab.txt (T5 PEGASUS, BERT): lower-cased, the usual special
    tokens. With `trust_remote_code=True` it is the T5 PEGASUS tokenizer (`tokenization_t5pegasus.py`: jieba
    words first, our ids); without, HF's BertTokenizer, which does not cut words with jieba, so Chinese comes out
    as characters (ids stay valid, sequences are longer). An encoder-decoder takes no token_type_ids."""
    module, name = _REMOTE_TOKENIZER
    out = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True,
           "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
           "mask_token": "[MASK]", "model_max_length": int(getattr(cfg, "max_position_embeddings", 512)),
           "auto_map": {"AutoTokenizer": [f"{module}.{name}", None]}}
    if hf_config.get("is_encoder_decoder"):
        out["model_input_names"] = ["input_ids", "attention_mask"]
    return out
