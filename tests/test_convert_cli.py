"""`t5pegasus convert`: run folder (live or EMA weights) -> HF, Megatron -> HF, refusals as one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import t5pegasus as tp
from t5pegasus.cli import main
from t5pegasus.convert import megatron

CFG = tp.GPTConfig.preset("tiny", vocab_size=64)


def params_of(seed: int):
    params = tp.models.unbox(tp.models.GPT(CFG).init(jax.random.PRNGKey(seed), jnp.ones((1, 4), jnp.int32))["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)


def make_run(folder, momentum=0.9, count=3):
    """A run folder as the training loop writes it: model config, run config, an orbax TrainState step."""
    from t5pegasus.training.checkpoint import Checkpointer
    from t5pegasus.training.state import TrainState, ema_transform

    live, average = params_of(1), params_of(2)
    ema = ema_transform(momentum).init(live)._replace(count=jnp.asarray(count, jnp.int32), ema=average)
    zero = jnp.zeros((), jnp.int32)
    state = TrainState(step=jnp.asarray(12, jnp.int32), params=live, opt_state=optax.adamw(1e-3).init(live),
                       ema=ema, rng=jax.random.PRNGKey(0), bad_in_a_row=zero, skipped=zero)
    folder.mkdir()
    CFG.save(folder / "model_config.json")
    (folder / "config.yaml").write_text(f"optim:\n  ema: {momentum}\n")
    ckpt = Checkpointer(folder / "checkpoints", asynchronous=False)
    ckpt.save(state, {"position": 0})
    ckpt.close()
    debiased = jax.tree.map(lambda e: e / (1 - momentum**count), average)
    return live, debiased


def same(a, b, **tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **(tol or dict(rtol=0, atol=0)))


def test_run_to_hf_live_and_ema(tmp_path, capsys):
    live, debiased = make_run(tmp_path / "run")
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert "wrote" in capsys.readouterr().out
    cfg, back = tp.convert.load_hf(tmp_path / "hf")
    assert cfg == CFG
    same(back, live)
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "ema"), "--ema"]) == 0
    _, back = tp.convert.load_hf(tmp_path / "ema")
    same(back, debiased, rtol=1e-6, atol=0)


def test_refusals_are_one_line_exit_2(tmp_path, capsys):
    make_run(tmp_path / "run")
    (tmp_path / "taken").mkdir()
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--force" in err
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "taken"), "--force"]) == 0
    assert (tmp_path / "taken" / "config.json").exists()
    (tmp_path / "junk").mkdir()
    assert main(["convert", str(tmp_path / "junk"), str(tmp_path / "x")]) == 2
    assert "is not a model folder" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "taken"), str(tmp_path / "y"), "--to", "megatron", "--ema"]) == 2
    assert "--ema needs a training run" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "z")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_megatron_to_hf_and_reshard(tmp_path, capsys):
    params = params_of(4)
    megatron.save_megatron(CFG, params, tmp_path / "mp", ranks=2)
    assert main(["convert", str(tmp_path / "mp"), str(tmp_path / "hf")]) == 2
    assert "--num-heads" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "mp"), str(tmp_path / "hf"), "--num-heads", "4"]) == 0
    _, back = tp.convert.load_hf(tmp_path / "hf")
    same(back, params)
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "mp4"), "--to", "megatron", "--shards", "4"]) == 0
    _, back = megatron.load_megatron(tmp_path / "mp4", num_heads=4)
    same(back, params)


@pytest.mark.parametrize("dtype", ["bfloat16"])
def test_dtype_option(tmp_path, dtype):
    make_run(tmp_path / "run")
    assert main(["convert", str(tmp_path / "run"), str(tmp_path / "hf"), "--dtype", dtype]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="numpy") as f:
        assert str(f.get_slice("transformer.wte.weight").get_dtype()).lower() in ("bf16", "bfloat16")


def test_an_export_ships_the_source_folders_own_tokenizer(tmp_path):
    """A TF / HF source that holds its vocab.txt (the T5 PEGASUS release layout) passes it on to the export;
    a source without one ships nothing; --tokenizer wins."""
    from t5pegasus.convert.detect import tokenizer_files

    release = tmp_path / "release"
    release.mkdir()
    (release / "vocab.txt").write_text("[PAD]\n[UNK]\n", encoding="utf-8")
    assert tokenizer_files(release, "tf") == {"vocab.txt": release / "vocab.txt"}
    assert tokenizer_files(release / "model.ckpt", "tf") == {"vocab.txt": release / "vocab.txt"}  # a prefix
    bare = tmp_path / "bare"
    bare.mkdir()
    assert tokenizer_files(bare, "hf") == {}
    spm = tmp_path / "spiece.model"
    spm.write_bytes(b"x")
    assert tokenizer_files(release, "tf", str(spm)) == {"spiece.model": spm}
