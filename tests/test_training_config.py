"""Run configs (presets, overrides, clear errors), the pretrain CLI's user errors, and the GPT-LM / UniLM
objectives plugged into the same train step."""

from pathlib import Path

import jax
import numpy as np
import pytest

from t5pegasus.cli import main
from t5pegasus.errors import UserError
from t5pegasus.families import BertConfig, GPTConfig
from t5pegasus.training import runconfig
from t5pegasus.training.objectives import make_objective
from t5pegasus.training.optim import OptimConfig, make_optimizer
from t5pegasus.training.state import TrainState
from t5pegasus.training.step import make_train_step

REPO = Path(__file__).resolve().parents[1]


def test_default_and_overrides():
    cfg = runconfig.load(None, ["optim.learning_rate=2e-4", "model.d_model=128", "optim.points={10000: 1}",
                                "mesh.rules=fsdp", "train.steps=7"])
    assert cfg.optim.learning_rate == 2e-4 and cfg.optim.points == {10000: 1.0} and cfg.train.steps == 7
    assert cfg.model_config(vocab_size=256).d_model == 128 and cfg.mesh.rules == "fsdp"
    assert runconfig.from_dict(runconfig.from_dict(cfg.to_dict()).to_dict()) == cfg  # round trip
    assert runconfig.load(None, ["log.progress=off"]).log.progress == "off"  # YAML's `off` is a boolean


@pytest.mark.parametrize("bad, message", [
    (["optim.lerning_rate=1"], "did you mean learning_rate"),
    (["trian.steps=3"], "did you mean train"),
    (["train.steps=abc"], "train.steps"),
    (["steps"], "key=value"),
    (["data.batch_size=6", "optim.accumulate=4"], "divisible"),
    (["train.stop_exit=one"], "train.stop_exit 'one' must be one of zero, signal"),
])
def test_bad_overrides_are_clear_errors(bad, message):
    with pytest.raises(UserError, match=message):
        runconfig.load(None, bad)


def test_cli_user_errors_are_one_line(capsys):
    assert main(["pretrain", "optim.lerning_rate=1"]) == 2
    assert main(["pretrain", "--config", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 2
    assert main(["pretrain", "--print-config", "train.steps=3"]) == 0
    assert "steps: 3" in capsys.readouterr().out


@pytest.mark.parametrize("path", [*map(str, sorted((REPO / "configs").glob("*.yaml"))),
                                  *runconfig.packaged_presets()])
def test_repo_presets_are_valid(path):
    cfg = runconfig.load(path)
    model = cfg.model_config(vocab_size=1024)
    make_objective(cfg.objective.kind, model)


def test_resume_mismatch_lists_keys():
    a = runconfig.load(None).to_dict()
    b = runconfig.load(None, ["optim.learning_rate=1e-5", "train.steps=9", "mesh.rules=fsdp"]).to_dict()
    assert runconfig.resume_mismatches(a, b) == ["optim.learning_rate: 0.001 -> 1e-05"]


@pytest.mark.parametrize("kind", ["lm", "unilm"])
def test_lm_and_unilm_objectives_train(kind):
    if kind == "lm":
        cfg = GPTConfig.preset("tiny", dropout_rate=0.0)
    else:
        cfg = BertConfig.preset("tiny", attention="unilm", dropout_rate=0.0)
    obj = make_objective(kind, cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 128, (4, 16)).astype(np.int32)
    batch = {"ids": ids, "targets": np.roll(ids, -1, 1), "weights": np.ones_like(ids)}
    if kind == "unilm":
        seg = np.zeros_like(ids)
        seg[:, 8:] = 1
        batch.update(segment_ids=seg, weights=np.roll(seg, -1, 1) * (np.arange(16) < 15))
    params = jax.tree.map(np.asarray, __import__("t5pegasus").models.unbox(obj.init(jax.random.PRNGKey(0), batch)))
    tx, schedule = make_optimizer(OptimConfig(learning_rate=1e-2, schedule="constant"))
    state = TrainState(step=np.int32(0), params=params, opt_state=tx.init(params), ema=None,
                       rng=jax.random.PRNGKey(1), bad_in_a_row=np.int32(0), skipped=np.int32(0))
    step = jax.jit(make_train_step(obj, tx, schedule))
    losses = []
    for _ in range(5):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.2
    assert float(m["tokens"]) == float(np.sum(batch["weights"]))
    with pytest.raises(UserError, match="t5"):
        make_objective("seq2seq", cfg)


@pytest.mark.parametrize("override,message", [
    ("model.d_modle=64", "d_modle"),
    ("model.attention.knd=linear", "knd"),
    ("model.attention.kind=linar", "attention.kind 'linar'"),
    ("model.family=gtp", "did you mean gpt"),
    ("model.preset=t5-pegasus-smal", "t5-pegasus-small"),
])
def test_model_section_is_checked_before_any_data(tmp_path, override, message):
    """Every model.* key is validated when the run config is read, before the corpus or vocabulary is touched."""
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=message):
        runconfig.load(None, [override, f"data.cache_dir={cache}", f"output_dir={tmp_path}"])
    assert not cache.exists()


def test_objective_family_mismatch_stops_before_data(tmp_path):
    """An objective that cannot train the model (or reads other examples) stops train() before data is built."""
    from t5pegasus.training.loop import train

    cache = tmp_path / "cache"
    for extra, message in ((["objective.kind=lm"], "objective 'lm' trains a bert or gpt model"),
                           (["data.task=lm"], "reads examples of data.task seq2seq or pegasus")):
        cfg = runconfig.load(None, [f"data.cache_dir={cache}", f"output_dir={tmp_path}", *extra])
        with pytest.raises(UserError, match=message):
            train(cfg)
        assert not cache.exists()


def test_every_family_record_resolves():
    """Each registered family names a config class that knows its name and parts that import."""
    from t5pegasus import config, families
    from t5pegasus.training.objectives import KINDS

    for family in families.all_families():
        assert config.config_class(family.name) is family.config and family.config.family == family.name
        assert callable(family.model.load()) and callable(family.decoding.load())
        assert family.default_objective in KINDS
        for fmt in ("hf", "tf"):
            assert family.converter(fmt) is not None
    assert families.for_hf_model_type("mt5").name == "t5" and families.for_hf_model_type("llama") is None



def test_packaged_presets_per_journey():
    assert {"pretrain-demo", "gpt-lm", "unilm", "simbert"} <= set(runconfig.packaged_presets())
    for name, family, kind, task in (("gpt-lm", "gpt", "lm", "lm"), ("unilm", "bert", "unilm", "unilm"),
                                     ("simbert", "bert", "simbert", "simbert")):
        cfg = runconfig.load(name)
        assert (cfg.model["family"], cfg.objective.kind, cfg.data.task) == (family, kind, task)
    simbert = runconfig.load("simbert").model_config(vocab_size=1024)
    assert (simbert.mask, simbert.pooler_activation) == ("unilm", "linear")


@pytest.mark.parametrize("family,kind,task", [("gpt", "lm", "lm"), ("bert", "unilm", "unilm")])
def test_model_family_alone_brings_its_preset_objective_and_task(family, kind, task):
    """`t5pegasus pretrain model.family=gpt`: the family's run preset (model preset, objective, data task),
    not the T5 demo's preset under another family's name."""
    from t5pegasus import families

    cfg = runconfig.load(None, [f"model.family={family}"])
    assert (cfg.model["family"], cfg.objective.kind, cfg.data.task) == (family, kind, task)
    assert cfg == runconfig.load(families.get(family).run_config)
    # on a given file: its other sections stay, the model / objective / task follow the family
    mixed = runconfig.load(str(REPO / "configs" / "pretrain-small.yaml"), [f"model.family={family}",
                                                                          "model.num_layers=1"])
    small = runconfig.load(str(REPO / "configs" / "pretrain-small.yaml"))
    assert (mixed.objective.kind, mixed.data.task, mixed.model["num_layers"]) == (kind, task, 1)
    assert (mixed.optim, mixed.train) == (small.optim, small.train)
    make_objective(mixed.objective.kind, mixed.model_config(vocab_size=256))


def test_objective_override_brings_its_data_task():
    cfg = runconfig.load("unilm", ["objective.kind=simbert"])
    assert cfg.data.task == "simbert"
    assert runconfig.load("unilm", ["objective.kind=simbert", "data.task=unilm"]).data.task == "unilm"
