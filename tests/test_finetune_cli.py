"""End to end through the command line: a tiny T5 pretraining run, `finetune` from it on generated pairs (the
target is the first characters of the source), the best model folder, `generate` from a file, piped stdin and
an interactive terminal, `evaluate`, `convert` of the best model, resume by rerunning, and user errors."""

import contextlib
import io
import json
import random

import jax
import numpy as np
import pytest

from t5pegasus.cli import main

PRETRAIN = {
    "name": "pre", "model.preset": "tiny", "model.d_model": 32, "model.d_ff": 64, "model.num_heads": 2,
    "model.d_kv": 8, "model.num_encoder_layers": 1, "model.num_decoder_layers": 1, "data.vocab_size": 400,
    "data.max_source_len": 32, "data.max_target_len": 8, "data.batch_size": 8, "train.steps": 1,
    "checkpoint.every": 1, "eval.every": 0, "log.tensorboard": "false", "log.peak_flops": 1e9,
}  # fmt: skip
QUIET = ["log.tensorboard=false", "log.peak_flops=1e9", 'log.progress="off"']


def _run(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from t5pegasus.pretrain.corpora import iter_peoples_daily_documents

    d = tmp_path_factory.mktemp("finetune_cli")
    docs = [doc for _, doc in zip(range(20), iter_peoples_daily_documents(), strict=False)]
    (d / "docs.txt").write_text("\n\n".join(docs), encoding="utf-8")
    values = {**PRETRAIN, "output_dir": d, "data.corpus": d / "docs.txt", "data.cache_dir": d / "cache"}
    code, _ = _run("pretrain", *[f"{k}={v}" for k, v in values.items()], 'log.progress="off"')
    assert code == 0
    chars = sorted({c for c in "".join(docs[:3]) if "\u4e00" <= c <= "\u9fff"})[:40]
    rng = random.Random(0)

    def pair():
        src = "".join(rng.choice(chars) for _ in range(rng.randint(6, 12)))
        return src, src[:4]

    with open(d / "train.jsonl", "w", encoding="utf-8") as f:
        for src, tgt in (pair() for _ in range(30)):
            f.write(json.dumps({"src": src, "tgt": tgt}, ensure_ascii=False) + "\n")
    dev = [pair() for _ in range(8)]
    (d / "dev.tsv").write_text("".join(f"{t}\t{s}\n" for s, t in dev), encoding="utf-8")
    (d / "inputs.txt").write_text("".join(f"{s}\n" for s, _ in dev[:5]), encoding="utf-8")
    return d


def finetune_args(d, steps):
    return ["finetune", "--init", str(d / "pre"), "--train", str(d / "train.jsonl"), "--dev", str(d / "dev.tsv"),
            "--output", str(d / "ft"), "--steps", str(steps), "--batch-size", "8", "--eval-every", "2",
            "--max-source-len", "16", "--max-target-len", "6", "--lr", "3e-3", *QUIET]


@pytest.fixture(scope="module")
def finetuned(work):
    code, out = _run(*finetune_args(work, 2))
    assert code == 0, out
    return work / "ft", out


def test_finetune_keeps_the_best_model(finetuned):
    run, out = finetuned
    best = run / "best"
    assert {"model_config.json", "tokenizer.txt", "vocab.txt", "finetune.json", "metrics.json"} <= {
        p.name for p in best.iterdir()}
    record = json.loads((best / "metrics.json").read_text())
    assert record["step"] == 2 and record["metric"] == "rouge-l"
    assert set(record["metrics"]) == {"rouge-1", "rouge-2", "rouge-l", "bleu"}
    assert record["value"] == record["metrics"]["rouge-l"]
    assert (best / "checkpoints" / "2" / "state").is_dir()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if x["kind"] == "eval"]
    assert evals and {"loss", "rouge-l", "bleu", "best_rouge-l"} <= set(evals[-1])
    assert f"t5pegasus generate --model {best}" in out and f"t5pegasus evaluate --model {best}" in out
    info = json.loads((best / "finetune.json").read_text())
    assert info["objective"] == "seq2seq" and info["max_source_len"] == 16 and info["max_target_len"] == 6


def test_generate_from_file_stdin_and_terminal(finetuned, monkeypatch, tmp_path):
    run, _ = finetuned
    d = run.parent
    code, _ = _run("generate", "--model", str(run / "best"), "--input", str(d / "inputs.txt"), "--output",
                   str(tmp_path / "out.txt"))
    assert code == 0
    from_file = (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()
    assert len(from_file) == 5
    monkeypatch.setattr("sys.stdin", io.StringIO((d / "inputs.txt").read_text(encoding="utf-8")))
    code, out = _run("generate", "--model", str(run))  # the fine-tuning run folder stands for its best model
    assert code == 0 and out.splitlines() == from_file

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    first, second = (d / "inputs.txt").read_text(encoding="utf-8").splitlines()[:2]
    monkeypatch.setattr("sys.stdin", Terminal(f"{first}\n\n{second}\n"))
    code, out = _run("generate", "--model", str(run / "best"))
    assert code == 0 and [x.replace("> ", "") for x in out.split("\n") if x.strip("> ")] == from_file[:2]
    code, out = _run("generate", "--model", str(run / "best"), "--input", str(d / "inputs.txt"), "--beams", "3",
                     "--num-return", "2")
    assert code == 0 and all(len(x.split("\t")) == 2 for x in out.splitlines())


def test_evaluate_prints_the_metrics(finetuned, tmp_path):
    run, _ = finetuned
    d = run.parent
    code, out = _run("evaluate", "--model", str(run / "best"), "--data", str(d / "dev.tsv"), "--json",
                     "--batch-size", "8", "--predictions", str(tmp_path / "pred.txt"))
    assert code == 0
    got = json.loads(out)
    assert got["examples"] == 8
    saved = json.loads((run / "best" / "metrics.json").read_text())["metrics"]
    for name in ("rouge-1", "rouge-2", "rouge-l", "bleu"):  # the same greedy decoding as the dev evaluation
        assert got[name] == pytest.approx(saved[name], abs=1e-6)
    assert len((tmp_path / "pred.txt").read_text(encoding="utf-8").splitlines()) == 8
    code, out = _run("evaluate", "--model", str(run / "best"), "--data", str(d / "dev.tsv"))
    assert code == 0 and "rouge-l" in out and "bleu" in out


def test_convert_reads_the_best_model(finetuned, tmp_path):
    from t5pegasus.convert import load_hf
    from t5pegasus.training.run_folder import RunFolder

    run, _ = finetuned
    code, _ = _run("convert", str(run / "best"), str(tmp_path / "hf"))
    assert code == 0 and (tmp_path / "hf" / "vocab.txt").is_file()
    _, want = RunFolder(run / "best").load_params()
    _, got = load_hf(tmp_path / "hf")
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_rerun_resumes(finetuned):
    run, _ = finetuned
    code, out = _run(*finetune_args(run.parent, 4))  # the same command, trained longer
    assert code == 0 and "resuming" in out and "step 4 of 4" in out
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [e["step"] for e in evals] == [2, 4]
    best = json.loads((run / "best" / "metrics.json").read_text())
    assert best["value"] == max(e["rouge-l"] for e in evals)
    assert best["step"] == max((e for e in evals), key=lambda e: (e["rouge-l"], -e["step"]))["step"]


@pytest.mark.parametrize("case", ["missing-train", "bad-dev-line", "unknown-model", "wrong-objective",
                                  "evaluate-bad-data", "no-ema"])
def test_user_errors_are_one_line(work, case, capsys, tmp_path):
    d = work
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"src": "a", "tgt": "b"}\n{"src": "a"}\n', encoding="utf-8")
    base = ["finetune", "--init", str(d / "pre"), "--train", str(d / "train.jsonl"), "--dev", str(d / "dev.tsv"),
            "--output", str(tmp_path / "ft")]
    argv, message = {
        "missing-train": (base[:3] + ["--train", str(tmp_path / "nope.jsonl")] + base[5:], "nope.jsonl does not exist"),
        "bad-dev-line": (base[:5] + ["--dev", str(bad)] + base[7:], "bad.jsonl:2: key 'tgt' is missing"),
        "unknown-model": (["generate", "--model", str(tmp_path), "--input", str(d / "inputs.txt")],
                          "is not a model folder"),
        "wrong-objective": (base + ["--objective", "lm"], "objective lm trains a bert or gpt model"),
        "evaluate-bad-data": (["evaluate", "--model", str(d / "pre"), "--data", str(bad)], "bad.jsonl:2"),
        "no-ema": (base + ["--ema"], "kept no EMA of the weights"),
    }[case]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_metric_bleu_keeps_the_best_by_bleu(work):
    """--metric bleu: best/ holds the step with the highest dev BLEU (the first one on a tie), whatever
    ROUGE-L says, and each eval line carries best_bleu."""
    d = work
    args = finetune_args(d, 6)
    args[args.index("--output") + 1] = str(d / "ft-bleu")
    code, out = _run(*args, "--metric", "bleu")
    assert code == 0, out
    evals = [json.loads(x) for x in (d / "ft-bleu" / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [e["step"] for e in evals] == [2, 4, 6] and all("best_bleu" in e for e in evals)
    best = json.loads((d / "ft-bleu" / "best" / "metrics.json").read_text())
    assert best["metric"] == "bleu" and best["value"] == max(e["bleu"] for e in evals)
    assert best["step"] == max(evals, key=lambda e: (e["bleu"], -e["step"]))["step"]
    assert evals[-1]["best_bleu"] == best["value"]


def test_metric_loss_keeps_the_lowest_dev_loss_over_the_whole_dev_file(work):
    """--metric loss: best/ holds the step of the lowest held-out loss (the first on a tie), measured over as
    many batches as it takes to cover the dev file (8 pairs, batches of 16: 1 batch, not the usual 4)."""
    import yaml

    d = work
    args = finetune_args(d, 6)
    args[args.index("--output") + 1] = str(d / "ft-loss")
    args[args.index("--batch-size") + 1] = "16"
    code, out = _run(*args, "--metric", "loss")
    assert code == 0, out
    assert yaml.safe_load((d / "ft-loss" / "config.yaml").read_text())["eval"]["batches"] == 1
    evals = [json.loads(x) for x in (d / "ft-loss" / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [e["step"] for e in evals] == [2, 4, 6] and all("best_loss" in e and "rouge-l" in e for e in evals)
    best = json.loads((d / "ft-loss" / "best" / "metrics.json").read_text())
    assert best["metric"] == "loss" and best["value"] == min(e["loss"] for e in evals)
    assert best["step"] == min(evals, key=lambda e: (e["loss"], e["step"]))["step"]
    assert evals[-1]["best_loss"] == best["value"]


def test_finetune_from_a_hf_folder_starts_from_its_weights(work, tmp_path):
    """--init HF_DIR (a HF transformers T5 folder with its vocab.txt): with a learning rate of 1e-30 (updates far
    below float32 resolution) the best model holds the HF folder's weights, read back through another export."""
    import t5pegasus as tp

    d = work
    assert main(["convert", str(d / "pre"), str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "vocab.txt").is_file()
    args = finetune_args(d, 2)
    args[args.index("--init") + 1] = str(tmp_path / "hf")
    args[args.index("--output") + 1] = str(tmp_path / "ft")
    args[args.index("--lr") + 1] = "1e-30"
    code, out = _run(*args)
    assert code == 0, out
    assert main(["convert", str(tmp_path / "ft" / "best"), str(tmp_path / "back")]) == 0
    cfg, want = tp.convert.load_hf(tmp_path / "hf")
    cfg_back, got = tp.convert.load_hf(tmp_path / "back")
    assert cfg_back == cfg
    for a, b in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-20)
