"""(config, params) -> a HF transformers folder: config.json, model.safetensors, generation_config.json.

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

from t5pegasus import fileio
from t5pegasus.config import ConfigBase, T5Config
from t5pegasus.errors import UserError

OUR_CONFIG_KEY = "t5pegasus_config"
EXACT_SIDECAR = "t5pegasus_exact.safetensors"


def _plain(params: Any) -> Any:
    from t5pegasus.models import unbox
    from t5pegasus.models.layers import unstack_layers

    return unstack_layers(unbox(params))


def _t5_exporter() -> tuple[Callable, Callable]:
    from t5pegasus.convert import t5_hf

    return t5_hf.config_to_hf, t5_hf.params_to_hf


def _bert_exporter() -> tuple[Callable, Callable]:
    from t5pegasus.convert import bert_hf

    return bert_hf.config_to_hf, bert_hf.params_to_hf


def _gpt_exporter() -> tuple[Callable, Callable]:
    from t5pegasus.convert import gpt2_hf

    return gpt2_hf.config_to_hf, gpt2_hf.params_to_hf


# config family -> loader of (config_to_hf, params_to_hf). Other families register here.
EXPORTERS: dict[str, Callable[[], tuple[Callable, Callable]]] = {"t5": _t5_exporter, "bert": _bert_exporter,
                                                                 "gpt": _gpt_exporter}


def cross_attention_bias_effect(cfg: T5Config, params: Any, seed: int = 0) -> float:
    """Max |logit difference| on a random probe batch between the model and the same model without the
    T5 PEGASUS cross-attention bias (what an HF export, which cannot express that bias, loses)."""
    import jax.numpy as jnp

    from t5pegasus.models import T5

    rng = np.random.default_rng(seed)
    enc = jnp.asarray(rng.integers(1, cfg.vocab_size, (2, 32)), jnp.int32)
    dec = jnp.asarray(rng.integers(1, cfg.vocab_size, (2, 16)), jnp.int32)
    with_bias = T5(cfg).apply({"params": params}, enc, dec)
    without = T5(cfg.replace(cross_attention_bias=False)).apply({"params": params}, enc, dec)
    return float(jnp.abs(with_bias - without).max())


def save_hf(cfg: ConfigBase, params: Any, folder: str | os.PathLike, *, allow_lossy: bool = False,
            overwrite: bool = False, dtype: str = "float32", extra_files: dict[str, str | os.PathLike] | None = None,
            report: Callable[[str], None] = print) -> Path:
    """Write a folder that `transformers.AutoModel*.from_pretrained` loads with no missing or unexpected keys.

    T5 PEGASUS: the logit scale is folded into the head and erf GELU maps to `gated-gelu_python`, both exact;
    the cross-attention position bias has no HF equivalent, so that export is refused unless `allow_lossy`,
    and then the measured logit difference on a probe batch is reported. `extra_files` maps names in the
    folder to files to copy there (tokenizer files: vocab.txt, spiece.model, ...).
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise UserError(f"{folder} exists; choose another destination or allow overwriting (--force)")
    if cfg.family not in EXPORTERS:
        raise UserError(f"no HF export for the {cfg.family!r} family; known: {', '.join(sorted(EXPORTERS))}")
    params = _plain(params)
    if isinstance(cfg, T5Config) and cfg.cross_attention_bias:
        if not allow_lossy:
            raise UserError("this T5 PEGASUS model adds a relative position bias in cross-attention, which HF "
                            "transformers cannot express; pass allow_lossy=True (--allow-lossy) to export without it")
        report(f"lossy export: dropping the cross-attention position bias changes logits by up to "
               f"{cross_attention_bias_effect(cfg, params):.4g} on a probe batch")
    config_to_hf, params_to_hf = EXPORTERS[cfg.family]()
    hf_config = config_to_hf(cfg)
    raw = params_to_hf(cfg, params)
    if cfg.family == "bert":
        _bert_pretraining_head(cfg, hf_config, raw)
    tensors = {k: np.ascontiguousarray(v.astype(np.dtype(dtype) if dtype != "bfloat16" else np.float32))
               for k, v in raw.items()}
    if dtype == "bfloat16":
        import ml_dtypes

        tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
    hf_config["torch_dtype"] = dtype
    # Our own config travels in config.json (HF ignores the key) so a re-import restores every switch.
    hf_config[OUR_CONFIG_KEY] = cfg.to_dict()
    exact = {}
    if isinstance(cfg, T5Config) and "lm_head.weight" in tensors and cfg.logits_scaled:
        # The folded head is rounded; keep the exact one beside it for a bit-exact re-import.
        head = params["shared"]["embedding"] if cfg.tie_word_embeddings else params["decoder"]["lm_head"]["kernel"]
        exact["lm_head"] = np.ascontiguousarray(np.asarray(head, np.float32))
    generation = {k: hf_config[k] for k in ("decoder_start_token_id", "eos_token_id", "pad_token_id", "bos_token_id")
                  if hf_config.get(k) is not None}
    with fileio.atomic_dir(folder, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
        if exact:
            save_file(exact, str(tmp / EXACT_SIDECAR))
        for name, source in (extra_files or {}).items():
            if not Path(source).is_file():
                raise UserError(f"{source} (to be saved as {name}) is not a file")
            shutil.copyfile(source, tmp / name)
        if "vocab.txt" in (extra_files or {}) and "tokenizer_config.json" not in (extra_files or {}):
            (tmp / "tokenizer_config.json").write_text(json.dumps(_wordpiece_tokenizer_config(cfg), indent=2) + "\n")
    return folder


def _bert_pretraining_head(cfg: Any, hf_config: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    """A BERT with both pooler and MLM head (UniLM, bert4keras checkpoints) fits HF's BertForPreTraining, whose
    next-sentence head we do not have: it is written as zeros (a 50/50 prediction), so every HF key is present."""
    if not (cfg.with_pooler and cfg.with_mlm):
        return
    hf_config["architectures"] = ["BertForPreTraining"]
    tensors["cls.seq_relationship.weight"] = np.zeros((2, cfg.hidden_size), np.float32)
    tensors["cls.seq_relationship.bias"] = np.zeros((2,), np.float32)


def _wordpiece_tokenizer_config(cfg: Any) -> dict[str, Any]:
    """HF `BertTokenizer` settings for a WordPiece vocab.txt (T5 PEGASUS, BERT): lower-cased, the usual special
    tokens. T5 PEGASUS cuts words with jieba first; HF's BertTokenizer does not, so it splits Chinese into
    characters (ids stay valid, sequences are longer)."""
    return {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "tokenize_chinese_chars": True,
            "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
            "mask_token": "[MASK]", "model_max_length": int(getattr(cfg, "max_position_embeddings", 512))}
