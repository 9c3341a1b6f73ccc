"""Conditional text generation: a BERT's label embedding feeding its conditional LayerNorms, end to end.

A tiny BERT LM (`--objective lm`, the causal mask: bert4keras' conditional LM example) and a UniLM are
fine-tuned from a plain BERT on labelled JSONL where the label decides the target; `generate --condition`
then follows the label. Also: adding the label embedding changes nothing until it is trained, cached decoding
under a label equals the full forward, string labels round-trip through the model folder, and the errors.
(The bert4keras parity through the label embedding is in test_bert4keras_golden.py.)
"""

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import t5pegasus as tp
from t5pegasus.cli import main
from t5pegasus.errors import UserError

QUIET = ["log.tensorboard=false", "log.peak_flops=1e9", 'log.progress="off"']
TEXTS = ["今天北京天气很好", "我们去公园散步", "人民日报发表社论", "经济发展稳中有进"]
TARGET = {"pos": "天气很好", "neg": "发表社论"}  # what each label's examples say


def _run(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue()


def _tiny(**changes):
    return tp.BertConfig.preset("tiny", vocab_size=384, max_position_embeddings=32, **changes)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from t5pegasus.convert.hf_export import save_hf
    from t5pegasus.text import build_wordpiece_vocab, save_vocab

    d = tmp_path_factory.mktemp("conditional")
    save_vocab(build_wordpiece_vocab(TEXTS, 300), d / "vocab.txt")
    cfg = _tiny()  # a plain (bidirectional) BERT, as a HF folder holds it
    ids = np.ones((1, 8), np.int32)
    params = tp.models.unbox(tp.models.Bert(cfg).init(jax.random.key(0), ids, np.zeros_like(ids))["params"])
    save_hf(cfg, params, d / "hf", extra_files={"vocab.txt": d / "vocab.txt"})
    rng = np.random.default_rng(0)
    chars = sorted(set("".join(TEXTS)))
    lm, s2s = [], []
    for i in range(32):
        label = ("pos", "neg")[i % 2]
        lm.append({"text": TARGET[label], "label": label})
        s2s.append({"src": "".join(rng.choice(chars, 5)), "tgt": TARGET[label], "label": i % 2})
    for name, rows in (("lm", lm), ("s2s", s2s)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                         encoding="utf-8")
    return d


def _finetune(d, train, objective, out, steps=24):
    code, text = _run("finetune", "--init", d / "hf", "--train", d / train, "--dev", d / train, "--output", d / out,
                      "--objective", objective, "--steps", steps, "--batch-size", 8, "--eval-every", steps,
                      "--eval-limit", 4, "--max-source-len", 8, "--max-target-len", 6, "--lr", "1e-2",
                      "model.condition_size=8", *QUIET)
    assert code == 0, text
    assert "--condition LABEL (one of: " in text  # the next-step hint says the model needs a label
    return d / out / "best"


@pytest.fixture(scope="module")
def lm_model(work):
    return _finetune(work, "lm.jsonl", "lm", "ft-lm")


def test_adding_a_label_embedding_changes_nothing_until_trained():
    """A plain model's weights lifted into the conditioned config (the new projections are zero) compute its
    logits exactly, under every label; and a model without the table has no new parameter."""
    from t5pegasus.finetune.run import _with_new_params

    plain = _tiny(mask="causal")
    ids = jnp.asarray(np.random.default_rng(1).integers(5, 300, (2, 10)), jnp.int32)
    params = tp.models.unbox(tp.models.Bert(plain).init(jax.random.key(0), ids)["params"])
    assert not any("condition" in "/".join(map(str, k)) for k in jax.tree_util.tree_flatten_with_path(params)[0])
    want = tp.models.Bert(plain).apply({"params": params}, ids).logits
    cond = plain.replace(conditional_layer_norm=True, condition_size=8, num_conditions=3,
                         condition_labels=["a", "b", "c"])
    lifted = _with_new_params(cond, params, seed=0)
    assert lifted["condition_embeddings"].shape == (3, 8) and np.abs(lifted["condition_embeddings"]).max() > 0
    for label in range(3):
        got = tp.models.Bert(cond).apply({"params": lifted}, ids, labels=jnp.full((2,), label)).logits
        assert np.array_equal(np.asarray(got), np.asarray(want))


def test_cached_decoding_under_labels_equals_the_full_forward():
    """Trained-looking (random, non-zero) projections: the UniLM decoding adapter's logits for a forced target,
    each row under its own label, are the full forward's."""
    from t5pegasus.decoding.lm_adapters import LABELS, UniLMDecoding

    for mask in ("unilm", "causal"):
        cfg = _tiny(mask=mask, conditional_layer_norm=True, condition_size=8, num_conditions=2)
        src = jnp.asarray([[2, 10, 11, 12, 3], [2, 13, 14, 3, 0]], jnp.int32)
        tgt = jnp.asarray([[20, 21, 22], [23, 24, 25]], jnp.int32)
        labels = jnp.asarray([1, 0], jnp.int32)
        params = tp.models.unbox(tp.models.Bert(cfg).init(jax.random.key(0), src, labels=labels)["params"])
        params = jax.tree_util.tree_map_with_path(  # the zero-initialised projections made non-zero
            lambda p, x: jax.random.normal(jax.random.key(len(str(p))), x.shape) * 0.5
            if "condition_" in str(p[-1]) else x, params)
        adapter = UniLMDecoding(cfg)
        start = adapter.start(params, {"source_ids": src, LABELS: labels}, 1, 4)
        state, steps = start.state, []
        for token in (start.prefix[:, -1:], tgt[:, :1], tgt[:, 1:2]):
            logits, state = adapter.step(params, state, token)
            steps.append(logits)
        for row, n in ((0, 5), (1, 4)):  # the full sequence: source (left-aligned away its padding), target
            ids = jnp.concatenate([src[row:row + 1, :n], tgt[row:row + 1, :2]], 1)
            seg = jnp.asarray([[0] * n + [1 if mask == "unilm" else 0] * 2])
            full = tp.models.Bert(cfg).apply({"params": params}, ids, seg, labels=labels[row:row + 1]).logits
            for k in range(3):
                err = float(jnp.abs(steps[k][row] - full[0, n - 1 + k]).max())
                assert err < 1e-4, (mask, row, k, err)
        other = adapter.start(params, {"source_ids": src, LABELS: 1 - labels}, 1, 4)
        assert float(jnp.abs(adapter.step(params, other.state, start.prefix[:, -1:])[0] - steps[0]).max()) > 1e-2


def test_lm_follows_the_label_and_string_labels_round_trip(work, lm_model, tmp_path):
    """A BERT LM fine-tuned on {"text", "label"} where the label decides the text: its folder records the
    label names, and `generate --condition` (and a line's own "label") generates each label's text."""
    from t5pegasus.convert.model_folder import load_model

    loaded = load_model(lm_model)
    cfg = loaded.cfg
    assert (cfg.mask, cfg.num_conditions, cfg.condition_labels, cfg.condition_size) == ("causal", 2, ("neg", "pos"), 8)
    assert cfg.condition_index("pos") == 1 and loaded.params["condition_embeddings"].shape == (2, 8)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"src": ""}\n{"label": "neg"}\n', encoding="utf-8")
    outs = {}
    for label in ("pos", "neg"):
        code, text = _run("generate", "--model", lm_model, "--input", inputs, "--condition", label,
                          "--max-length", 6)
        assert code == 0, text
        outs[label] = text.splitlines()
    strip = lambda s: s.replace(" ", "")
    assert strip(outs["pos"][0]) == TARGET["pos"] and strip(outs["neg"][0]) == TARGET["neg"]
    assert strip(outs["pos"][1]) == TARGET["neg"]  # the line's own label
    with pytest.raises(UserError, match="not one of the model's labels: neg, pos"):
        cfg.condition_index("neutral")


def test_unilm_with_integer_labels_follows_the_label(work):
    """UniLM (src -> tgt) fine-tuned with integer labels 0 / 1; the dev generations at evaluation were made under
    each pair's label, so the best model's ROUGE-L is high."""
    from t5pegasus.convert.model_folder import load_model
    from t5pegasus.decoding import Settings
    from t5pegasus.finetune.predict import Predictor

    best = _finetune(work, "s2s.jsonl", "unilm", "ft-s2s")
    loaded = load_model(best)
    assert (loaded.cfg.mask, loaded.cfg.num_conditions, loaded.cfg.condition_labels) == ("unilm", 2, ())
    predictor = Predictor(loaded.cfg, loaded.params, loaded.tokenizer, max_source_len=8)
    texts = predictor(["今天", "今天"], Settings(max_new_tokens=6), labels=[0, 1])
    assert [t[0].replace(" ", "") for t in texts] == [TARGET["pos"], TARGET["neg"]]
    assert json.loads((best / "metrics.json").read_text())["metrics"]["rouge-l"] > 90


@pytest.mark.parametrize("case", ["no-condition", "unknown", "unlabelled-model", "mixed", "dev-unlabelled", "gpt",
                                  "pack"])
def test_user_errors(work, lm_model, tmp_path, case, capsys):
    d = work
    if case in ("no-condition", "unknown"):
        (tmp_path / "in.jsonl").write_text('{"src": ""}\n', encoding="utf-8")
        extra = ["--condition", "neutral"] if case == "unknown" else []
        argv = ["generate", "--model", lm_model, "--input", tmp_path / "in.jsonl", *extra]
        match = "not one of the model's labels" if case == "unknown" else "generates under a condition label"
    elif case == "unlabelled-model":
        (tmp_path / "in.txt").write_text("今天\n", encoding="utf-8")
        argv = ["generate", "--model", d / "hf", "--model-kind", "unilm", "--input", tmp_path / "in.txt",
                "--condition", "pos"]
        match = "has no label embedding"
    elif case == "mixed":
        (tmp_path / "t.jsonl").write_text('{"text": "今天", "label": "pos"}\n{"text": "我们"}\n', encoding="utf-8")
        argv = ["finetune", "--init", d / "hf", "--train", tmp_path / "t.jsonl", "--dev", tmp_path / "t.jsonl",
                "--output", tmp_path / "o", "--objective", "lm"]
        match = "some lines have a \"label\""
    elif case == "dev-unlabelled":
        (tmp_path / "dev.jsonl").write_text('{"text": "今天"}\n', encoding="utf-8")
        argv = ["finetune", "--init", d / "hf", "--train", d / "lm.jsonl", "--dev", tmp_path / "dev.jsonl",
                "--output", tmp_path / "o", "--objective", "lm"]
        match = "dev.jsonl has no condition labels but"
    elif case == "gpt":
        from t5pegasus.finetune.data import check_labelled

        with pytest.raises(UserError, match="a gpt model has none"):
            check_labelled(tp.GPTConfig.preset("tiny"), "lm")
        return
    else:
        argv = ["finetune", "--init", d / "hf", "--train", d / "lm.jsonl", "--dev", d / "lm.jsonl", "--output",
                tmp_path / "o", "--objective", "lm", "--steps", 1, "data.pack=true", *QUIET]
        match = "data.pack is not available"
    code, _ = _run(*argv)
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Traceback" not in err, err
