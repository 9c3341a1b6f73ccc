"""GPT-2 logits equal HF `GPT2LMHeadModel` (random weights, float32, offline); the converter round-trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import t5pegasus as tp
from t5pegasus.convert import gpt2_hf
from t5pegasus.convert.checkpoint_files import read_state_dict


def small_gpt2(folder, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random HF `GPT2LMHeadModel` (head tied to wte) saved to `folder`."""
    torch.manual_seed(seed)
    config = dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=40, resid_pdrop=0.0, embd_pdrop=0.0,
                  attn_pdrop=0.0, bos_token_id=1, eos_token_id=1)
    config.update(overrides)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config))
    with torch.no_grad():  # HF initialises LayerNorms to 1/0 and biases to 0: make them informative
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    model.save_pretrained(folder)
    return model


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("pad", [False, True])
def test_gpt2_logits_match_hf(tmp_path, pad):
    hf = small_gpt2(tmp_path)
    assert hf.lm_head.weight is hf.transformer.wte.weight  # transformers 5 ties the head and does not save it
    cfg, params = tp.convert.load_hf(tmp_path)
    assert isinstance(cfg, tp.GPTConfig) and cfg.hidden_act == "gelu" and cfg.layer_norm_epsilon == 1e-5
    rng = np.random.default_rng(0)
    ids = rng.integers(2, cfg.vocab_size, (3, 24))
    mask = np.ones_like(ids)
    if pad:
        mask[1, 15:] = 0
        mask[2, 3:] = 0
        ids[mask == 0] = 0
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    logits = tp.models.GPT(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32),
                                      jnp.asarray(mask, bool) if pad else None)
    assert logits.shape == (3, 24, cfg.vocab_size) and logits.dtype == jnp.float32
    real = mask.astype(bool)
    assert rel_err(np.asarray(logits)[real], ref[real]) < 1e-4


def test_gpt2_base_model_folder_and_round_trip(tmp_path):
    hf = small_gpt2(tmp_path / "lm", seed=1)
    cfg, params = tp.convert.load_hf(tmp_path / "lm")
    # GPT2Model (no `transformer.` prefix, no head) loads to the same params.
    hf.transformer.save_pretrained(tmp_path / "base")
    _, base = tp.convert.load_hf(tmp_path / "base")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(base),
                                                    jax.tree_util.tree_leaves(params), strict=True))
    back = gpt2_hf.params_to_hf(cfg, params)
    original = read_state_dict(tmp_path / "lm")
    assert set(back) == set(original)
    for name, value in original.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    hf_cfg = transformers.GPT2Config(**gpt2_hf.config_to_hf(cfg))
    assert (hf_cfg.n_embd, hf_cfg.n_layer, hf_cfg.activation_function) == (32, 2, "gelu_new")


def test_unsupported_gpt2_variant_is_refused(tmp_path):
    small_gpt2(tmp_path, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(tp.UserError, match="scale_attn_by_inverse_layer_idx"):
        tp.convert.load_hf(tmp_path)
