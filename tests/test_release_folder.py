"""The T5 PEGASUS release folder as it is (bert4keras `config.json`, `checkpoint` + `model.ckpt.*`, `vocab.txt`,
no config of ours; here a tiny one bert4keras 0.11.5 built, tests/golden/t5_pegasus_b4k) is a model folder for
every command: `generate`, `finetune --init`, `evaluate`, `convert` and `load_model` read it as T5 PEGASUS (its
three switches on, the WordPiece+jieba tokenizer, decoding from [CLS] to [SEP]) and compute what bert4keras does;
truncated weight files are one line, exit 2, in every reader."""

import io
import json
import random
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import t5pegasus as tp
from t5pegasus.cli import main
from t5pegasus.convert.model_folder import load_model
from t5pegasus.convert.tf import load_tf

pytest.importorskip("tensorflow")

GOLDEN = Path(__file__).parent / "golden" / "t5_pegasus_b4k"  # built by bert4keras 0.11.5 itself


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The bert4keras-built golden folder in the release's layout (config.json, checkpoint, model.ckpt.*,
    vocab.txt), copied, with pairs made from its recorded sentences."""
    d = tmp_path_factory.mktemp("release")
    folder = d / "chinese_t5_pegasus_tiny"
    shutil.copytree(GOLDEN, folder, ignore=shutil.ignore_patterns("golden.*", "tokenizer.json"))
    texts = [x["text"] for x in json.loads((GOLDEN / "tokenizer.json").read_text(encoding="utf-8"))["sentences"]]
    rng = random.Random(0)
    pairs = [(t, t[: rng.randint(2, 4)]) for t in texts * 2]
    with open(d / "train.jsonl", "w", encoding="utf-8") as f:
        for src, tgt in pairs:
            f.write(json.dumps({"src": src, "tgt": tgt}, ensure_ascii=False) + "\n")
    (d / "dev.tsv").write_text("".join(f"{t}\t{s}\n" for s, t in pairs[:4]), encoding="utf-8")
    (d / "inputs.txt").write_text("".join(f"{s}\n" for s in texts[:3]), encoding="utf-8")
    return folder


def _greedy(cfg, params, tok, text: str, max_new: int) -> str:
    """Greedy decoding by full forward passes (no cache), from [CLS] until [SEP], as bert4keras decodes."""
    model = tp.models.T5(cfg)
    enc = jnp.asarray([tok.add_special(tok.encode(text), 64)], jnp.int32)
    dec = [tok.decoder_start_id]
    for _ in range(max_new):
        logits = model.apply({"params": params}, enc, jnp.asarray([dec], jnp.int32))
        dec.append(int(jnp.argmax(logits[0, -1, : tok.vocab_size])))
        if dec[-1] == tok.eos_id:
            break
    return tok.decode([t for t in dec[1:] if t != tok.eos_id])


def test_load_model_reads_the_release_as_bert4keras_built_it(release):
    loaded = load_model(release)
    cfg = loaded.cfg
    assert loaded.kind == "tf" and loaded.tokenizer_kind == "wordpiece"
    assert cfg.cross_attention_bias and cfg.logits_scaled and cfg.feed_forward == "gated-gelu-erf"
    vocab = (release / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab[cfg.decoder_start_token_id] == "[CLS]" and vocab[cfg.eos_token_id] == "[SEP]"
    assert vocab[cfg.pad_token_id] == "[PAD]"
    # bert4keras' probabilities on its recorded inputs, through the loader every command uses
    with np.load(GOLDEN / "golden.npz") as g:
        enc, dec, probs = g["encoder_ids"], g["decoder_ids"], g["probs"]
    logits = tp.models.T5(cfg).apply({"params": loaded.params}, jnp.asarray(enc), jnp.asarray(dec))
    ours = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
    ref = np.log(probs.astype(np.float64))
    centred = lambda x: x - x.mean(-1, keepdims=True)  # noqa: E731
    assert np.abs(centred(ours) - centred(ref))[dec != 0].max() < 1e-4
    # bert4keras' tokenizer ids on its recorded sentences
    for sentence in json.loads((GOLDEN / "tokenizer.json").read_text(encoding="utf-8"))["sentences"]:
        assert loaded.tokenizer.add_special(loaded.tokenizer.encode(sentence["text"]), 512) == sentence["ids"]
    # a checkpoint given by its prefix is the same model folder
    by_prefix = load_model(release / "model.ckpt")
    assert by_prefix.cfg == cfg and by_prefix.tokenizer_path == loaded.tokenizer_path


def test_generate_reads_the_release(release, monkeypatch, capsys):
    d = release.parent
    sources = (d / "inputs.txt").read_text(encoding="utf-8").splitlines()
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(sources) + "\n"))
    assert main(["generate", "--model", str(release), "--max-length", "5"]) == 0
    got = capsys.readouterr().out.splitlines()
    cfg, params = load_tf(release)
    tok = load_model(release, with_params=False).tokenizer
    assert got == [_greedy(cfg, params, tok, s, 5) for s in sources]


def _finetune_argv(release, out, steps):
    d = release.parent
    return ["finetune", "--init", str(release), "--train", str(d / "train.jsonl"), "--dev", str(d / "dev.tsv"),
            "--output", str(out), "--steps", str(steps), "--batch-size", "8", "--eval-every", "2",
            "--max-source-len", "16", "--max-target-len", "4", "--lr", "1e-30", "log.tensorboard=false",
            "log.peak_flops=1e9", 'log.progress="off"']


@pytest.fixture(scope="module")
def finetuned(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "ft"
    assert main(_finetune_argv(release, out, 2)) == 0
    return out


def test_finetune_from_the_release_starts_from_its_weights(release, finetuned):
    """--init RELEASE with a learning rate of 1e-30: the best model holds the release's weights."""
    from t5pegasus.training.run_folder import RunFolder

    cfg, want = load_tf(release)
    best_cfg, got = RunFolder(finetuned / "best").load_params()
    assert best_cfg.cross_attention_bias and best_cfg.logits_scaled and best_cfg.vocab_size == cfg.vocab_size
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(tp.models.unbox(got)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-20)
    assert (finetuned / "best" / "vocab.txt").is_file()


def _cut(path):
    """Truncate a file to half its size, as an interrupted copy or a full disk leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _cut_arrays(folder):
    """Truncate the array data files of an orbax checkpoint (OCDBT keeps them in `d/` folders)."""
    for path in folder.rglob("*"):
        if path.is_file() and path.parent.name == "d":
            _cut(path)


def _one_line_error(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_truncated_weights_are_one_line_naming_the_file(release, finetuned, tmp_path, capsys):
    inputs = str(release.parent / "inputs.txt")
    tf_copy = tmp_path / "tf"
    shutil.copytree(release, tf_copy)
    _cut(tf_copy / "model.ckpt.data-00000-of-00001")
    _one_line_error(["generate", "--model", str(tf_copy), "--input", inputs], capsys,
                    "model.ckpt.data-00000-of-00001: not a readable TF checkpoint", "truncated")
    assert main(["convert", str(finetuned / "best"), str(tmp_path / "hf"), "--allow-lossy"]) == 0
    capsys.readouterr()
    _cut(tmp_path / "hf" / "model.safetensors")
    _one_line_error(["convert", str(tmp_path / "hf"), str(tmp_path / "back"), "--to", "tf"], capsys,
                    "model.safetensors: not a readable safetensors file")
    best = tmp_path / "best"
    shutil.copytree(finetuned / "best", best)
    _cut_arrays(best / "checkpoints")
    _one_line_error(["generate", "--model", str(best), "--input", inputs], capsys, "not a readable checkpoint")


def test_a_truncated_checkpoint_stops_the_resume_naming_the_step_before(release, tmp_path, capsys):
    run = tmp_path / "ft"
    argv = _finetune_argv(release, run, 2)
    argv[argv.index("--eval-every") + 1] = "1"
    assert main(argv) == 0
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    _cut_arrays(run / "checkpoints" / str(steps[-1]))
    err = _one_line_error(_finetune_argv(release, run, 4), capsys, f"checkpoints/{steps[-1]}: not a readable")
    assert (f"resume from step {steps[-2]}" in err) if len(steps) > 1 else "start the run again" in err


def test_evaluate_reads_the_release(release, capsys):
    d = release.parent
    assert main(["evaluate", "--model", str(release), "--data", str(d / "dev.tsv"), "--json", "--max-length",
                 "4"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["examples"] == 4 and {"rouge-l", "bleu"} <= set(got)


def test_ema_of_a_release_is_refused(release, capsys):
    assert main(["generate", "--model", str(release), "--ema", "--input", str(release.parent / "inputs.txt")]) == 2
    err = capsys.readouterr().err
    assert "--ema needs a training run" in err and len(err.strip().splitlines()) == 1


def test_a_batch_that_does_not_split_over_the_devices_is_one_line(release, tmp_path, capsys):
    d = release.parent
    argv = ["finetune", "--init", str(release), "--train", str(d / "train.jsonl"), "--dev", str(d / "dev.tsv"),
            "--output", str(tmp_path / "ft"), "--steps", "1", "--batch-size", str(jax.device_count() + 1)]
    if jax.device_count() == 1:
        pytest.skip("one device: every batch size splits")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does not split over" in err and len(err.strip().splitlines()) == 1


def test_the_pytorch_export_of_the_release_computes_what_bert4keras_does(release, tmp_path, capsys):
    """`convert RELEASE DST` (no --allow-lossy) -> HF transformers with remote code: bert4keras' probabilities
    within 1e-4 and its tokenizer ids, from PyTorch; without remote code it still loads as a plain MT5."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    assert main(["convert", str(release), str(tmp_path / "pt")]) == 0
    assert "exact with trust_remote_code=True" in capsys.readouterr().out
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "pt", trust_remote_code=True).eval()
    with np.load(GOLDEN / "golden.npz") as g:
        enc, dec, probs = (torch.as_tensor(g[k]) for k in ("encoder_ids", "decoder_ids", "probs"))
    with torch.no_grad():
        logits = model(input_ids=enc.long(), attention_mask=enc != 0, decoder_input_ids=dec.long()).logits
    ours = torch.log_softmax(logits.double(), -1)
    ref = torch.log(probs.double())
    centred = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731
    assert (centred(ours) - centred(ref)).abs()[dec != 0].max() < 1e-4
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "pt", trust_remote_code=True)
    for sentence in json.loads((GOLDEN / "tokenizer.json").read_text(encoding="utf-8"))["sentences"]:
        assert tokenizer(sentence["text"])["input_ids"] == sentence["ids"]
    plain = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "pt")
    assert type(plain).__name__ == "MT5ForConditionalGeneration"
