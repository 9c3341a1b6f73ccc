"""Megatron (CPM-LM layout) model-parallel shards merge back into the GPT they were split from, exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import t5pegasus as tp
from t5pegasus.convert import megatron
from t5pegasus.convert.checkpoint_files import TensorSource

CFG = tp.GPTConfig.preset("tiny", vocab_size=96, num_heads=4, head_dim=8, intermediate_size=64,
                          bos_token_id=0, eos_token_id=0)


def random_gpt(seed: int = 0) -> dict:
    params = tp.models.GPT(CFG).init(jax.random.PRNGKey(seed), jnp.ones((1, 8), jnp.int32))["params"]
    params = tp.models.unbox(params)
    # Biases and norms start at constants; make every tensor informative so a swap cannot hide.
    rng = np.random.default_rng(seed + 1)
    return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)


def full_megatron_state(params: dict) -> dict[str, np.ndarray]:
    """The model-parallel-1 Megatron GPT-2 state dict, written here from the documented names (not the library's)."""
    d, out = CFG.hidden_size, {}
    out["word_embeddings.weight"] = params["token_embeddings"]["embedding"]
    out["position_embeddings.weight"] = params["position_embeddings"]["embedding"]
    out["transformer.final_layernorm.weight"] = params["final_norm"]["scale"]
    out["transformer.final_layernorm.bias"] = params["final_norm"]["bias"]
    for i in range(CFG.num_layers):
        lp, p = params[f"layers_{i}"], f"transformer.layers.{i}"
        att = lp["attention"]
        out[f"{p}.attention.query_key_value.weight"] = np.concatenate(
            [att[n]["kernel"].reshape(d, d).T for n in ("query", "key", "value")])
        out[f"{p}.attention.query_key_value.bias"] = np.concatenate([att[n]["bias"].reshape(d)
                                                                     for n in ("query", "key", "value")])
        out[f"{p}.attention.dense.weight"] = att["out"]["kernel"].reshape(d, d).T
        out[f"{p}.attention.dense.bias"] = att["out"]["bias"]
        out[f"{p}.input_layernorm.weight"], out[f"{p}.input_layernorm.bias"] = (
            lp["attention_norm"]["scale"], lp["attention_norm"]["bias"])
        out[f"{p}.post_attention_layernorm.weight"], out[f"{p}.post_attention_layernorm.bias"] = (
            lp["mlp_norm"]["scale"], lp["mlp_norm"]["bias"])
        out[f"{p}.mlp.dense_h_to_4h.weight"] = lp["mlp"]["wi"]["kernel"].T
        out[f"{p}.mlp.dense_h_to_4h.bias"] = lp["mlp"]["wi"]["bias"]
        out[f"{p}.mlp.dense_4h_to_h.weight"] = lp["mlp"]["wo"]["kernel"].T
        out[f"{p}.mlp.dense_4h_to_h.bias"] = lp["mlp"]["wo"]["bias"]
    return out


def two_ranks(full: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Split the way Megatron's column/row-parallel layers and vocab-parallel embedding hold them."""
    ranks: list[dict] = [{}, {}]
    for name, w in full.items():
        if name == "word_embeddings.weight" or ".dense_h_to_4h." in name:
            parts = np.split(w, 2, axis=0)
        elif name.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
            parts = np.split(w, 2, axis=1)
        elif ".query_key_value." in name:  # each rank: [q_r; k_r; v_r] for its half of the heads
            q, k, v = (np.split(t, 2, axis=0) for t in np.split(w, 3, axis=0))
            parts = [np.concatenate([q[r], k[r], v[r]]) for r in range(2)]
        else:
            parts = [w, w]
        for r in range(2):
            ranks[r][name] = np.ascontiguousarray(parts[r])
    return ranks


def write_shards(folder, ranks, iteration=80000):
    (folder / str(iteration)).mkdir(parents=True)
    (folder / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    for r, state in enumerate(ranks):
        torch.save({"iteration": iteration, "module": {k: torch.from_numpy(v.copy()) for k, v in state.items()}},
                   folder / str(iteration) / f"mp_rank_{r:02d}_model_states.pt")


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    return [p for p, _ in la] == [p for p, _ in lb] and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(la, lb, strict=True))


def test_two_shards_merge_back_exactly(tmp_path):
    params = random_gpt()
    write_shards(tmp_path, two_ranks(full_megatron_state(params)))
    cfg, merged = megatron.load_megatron(tmp_path, num_heads=CFG.num_heads)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.intermediate_size, cfg.max_position_embeddings) == (
        CFG.vocab_size, CFG.hidden_size, CFG.num_layers, CFG.intermediate_size, CFG.max_position_embeddings)
    assert cfg.num_heads == CFG.num_heads and cfg.hidden_act == "gelu"
    assert leaves_equal(merged, params)
    # The iteration folder itself is accepted too.
    _, again = megatron.load_megatron(tmp_path / "80000", num_heads=CFG.num_heads)
    assert leaves_equal(again, params)


def test_plain_concatenation_of_fused_qkv_is_wrong(tmp_path):
    params = random_gpt(seed=3)
    ranks = two_ranks(full_megatron_state(params))
    right = megatron.merge_shards(ranks)
    naive = dict(right)
    for name in right:
        if ".query_key_value." in name:
            naive[name] = np.concatenate([ranks[0][name], ranks[1][name]])
    cfg = CFG.replace(dropout_rate=0.0)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 12)), jnp.int32)
    model = tp.models.GPT(cfg)
    want = model.apply({"params": params}, ids)
    got = model.apply({"params": megatron.params_from_megatron(cfg, TensorSource(right, "right"))}, ids)
    bad = model.apply({"params": megatron.params_from_megatron(cfg, TensorSource(naive, "naive"))}, ids)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert float(jnp.abs(bad - want).max()) > 0.1 * float(jnp.abs(want).max())


def test_split_then_merge_and_save_round_trip(tmp_path):
    params = random_gpt(seed=5)
    full = full_megatron_state(params)
    for n in (1, 2, 4):
        merged = megatron.merge_shards(megatron.split_state(full, n))
        assert all(np.array_equal(merged[k], full[k]) for k in full)
    # The library's split equals the documented one.
    for mine, theirs in zip(megatron.split_state(full, 2), two_ranks(full), strict=True):
        assert all(np.array_equal(mine[k], theirs[k]) for k in theirs)
    megatron.save_megatron(CFG, params, tmp_path / "mp", ranks=2, iteration=7)
    assert (tmp_path / "mp" / "7" / "mp_rank_01_model_states.pt").exists()
    cfg, back = megatron.load_megatron(tmp_path / "mp", num_heads=4)
    assert leaves_equal(back, params)
    with pytest.raises(tp.UserError, match="exists"):
        megatron.save_megatron(CFG, params, tmp_path / "mp", ranks=2)


def test_bad_shards_are_named(tmp_path):
    params = random_gpt()
    ranks = two_ranks(full_megatron_state(params))
    ranks[1]["transformer.layers.0.input_layernorm.weight"] = ranks[1][
        "transformer.layers.0.input_layernorm.weight"] + 1
    with pytest.raises(tp.UserError, match="input_layernorm.weight.*same on every rank"):
        megatron.merge_shards(ranks)
    ranks = two_ranks(full_megatron_state(params))
    for r in ranks:
        r["transformer.layers.1.mlp.dense_4h_to_h.weight"] = r["transformer.layers.1.mlp.dense_4h_to_h.weight"][:, :-1]
    write_shards(tmp_path, ranks)
    with pytest.raises(tp.UserError, match=r"dense_4h_to_h.weight' has shape \(32, 62\), expected \(32, 64\)"):
        megatron.load_megatron(tmp_path, num_heads=4)
    with pytest.raises(tp.UserError, match="number of attention heads"):
        megatron.load_megatron(tmp_path)
    (tmp_path / "80000" / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(tp.UserError, match="shard is missing"):
        megatron.load_megatron(tmp_path, num_heads=4)
