"""GPT (lm: prompt + target, loss on the target) and UniLM (a plain BERT gets the seq2seq mask) fine-tuning,
each started from a HF transformers folder with a WordPiece vocab.txt; the best model generates."""

import json

import jax
import numpy as np
import pytest

from t5pegasus.finetune.run import FinetuneSpec, finetune

TEXTS = ["今天北京天气很好", "我们去公园散步", "人民日报发表社论", "经济发展稳中有进", "新年贺词", "春节快乐"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from t5pegasus.text import build_wordpiece_vocab, save_vocab

    d = tmp_path_factory.mktemp("objectives")
    save_vocab(build_wordpiece_vocab(TEXTS, 300), d / "vocab.txt")
    chars = sorted(set("".join(TEXTS)))
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(20):
        src = "".join(rng.choice(chars, int(rng.integers(4, 9))))
        lines.append(json.dumps({"src": src, "tgt": src[::-1][:3]}, ensure_ascii=False))
    (d / "train.jsonl").write_text("\n".join(lines[:16]) + "\n", encoding="utf-8")
    (d / "dev.jsonl").write_text("\n".join(lines[16:]) + "\n", encoding="utf-8")
    return d


def _hf_folder(d, family):
    import t5pegasus as tp
    from t5pegasus.convert.hf_export import save_hf

    if family == "gpt":
        cfg = tp.GPTConfig.preset("tiny", vocab_size=384, max_position_embeddings=32)
        model, args = tp.models.GPT(cfg), (np.ones((1, 8), np.int32),)
    else:
        cfg = tp.BertConfig.preset("tiny", vocab_size=384, max_position_embeddings=32)  # bidirectional, as BERT
        model, args = tp.models.Bert(cfg), (np.ones((1, 8), np.int32), np.zeros((1, 8), np.int32))
    params = tp.models.unbox(model.init(jax.random.key(0), *args)["params"])
    folder = d / f"hf-{family}"
    save_hf(cfg, params, folder, extra_files={"vocab.txt": d / "vocab.txt"})
    return folder


@pytest.mark.parametrize("family,objective", [("gpt", "lm"), ("bert", "unilm")])
def test_finetune_from_hf_folder(files, family, objective):
    from t5pegasus.config import load_config
    from t5pegasus.convert.model_folder import load_model
    from t5pegasus.decoding import Settings
    from t5pegasus.finetune.predict import Predictor

    d = files
    spec = FinetuneSpec(init=str(_hf_folder(d, family)), train=str(d / "train.jsonl"), dev=str(d / "dev.jsonl"),
                        output=str(d / f"ft-{family}"), steps=2, batch_size=8, learning_rate=3e-3, eval_every=2,
                        max_source_len=12, max_target_len=4,
                        overrides=("log.tensorboard=false", "log.peak_flops=1e9", 'log.progress="off"'))
    result = finetune(spec, say=lambda text: None)
    assert result.run.final_step == 2 and result.best is not None and result.best["step"] == 2
    cfg = load_config(result.run_dir / "model_config.json")
    assert f"kind: {objective}" in (result.run_dir / "config.yaml").read_text()
    if family == "bert":
        assert cfg.mask == "unilm" and (cfg.cls_token_id, cfg.sep_token_id) == (101, 102)
    else:
        assert (cfg.bos_token_id, cfg.eos_token_id) == (101, 102)  # aligned with the vocab's [CLS] / [SEP]
    loaded = load_model(result.best_dir)
    texts = Predictor(loaded.cfg, loaded.params, loaded.tokenizer, max_source_len=12)(
        ["今天天气", "我们去"], Settings(max_new_tokens=4, num_beams=2))
    assert len(texts) == 2 and all(isinstance(t[0], str) for t in texts)
    if family == "gpt":  # a plain LM continues `[CLS] text` instead
        more = Predictor(loaded.cfg, loaded.params, loaded.tokenizer, max_source_len=12, continuation=True)(
            ["今天天气"], Settings(max_new_tokens=3))
        assert len(more) == 1 and isinstance(more[0][0], str)
    # the loss covered the target tokens only: tokens per step = target tokens (<= 4 per pair) x batch
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if x["kind"] == "eval"]
    assert 0 < evals[-1]["tokens"] <= 4 * 4 * 8 and "rouge-l" in evals[-1]
