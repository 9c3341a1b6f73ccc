"""The attention config switches inside the models.

Every valid (family, attention_kind, position_kind) trains: finite gradients that reach the attention
projections and a few AdamW steps that lower the loss. The switches really switch: RoPE in a BERT layer
equals a direct complex-number computation, rotary models are invariant to a shift of all positions (and
learned ones are not), RealFormer equals manual residual-score accumulation, hierarchical positions extend the
table exactly. UniLM with linear / performer attention equals the UniLM-masked quadratic form. Cached decoding
with rotary positions / RealFormer equals the full forward (T5, GPT, UniLM), also with per-row positions, and so
does UniLM's with the linear kinds. Invalid combinations are refused with one clear message.

Everything runs eagerly (no per-combination XLA compile): on a 2-core CPU a tiny model's eager step costs
far less than compiling ~45 different train steps, and the primitives' compiled kernels are shared.
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import t5pegasus as tp
from t5pegasus.attention import hierarchical_table
from t5pegasus.config import ATTENTION_KINDS, POSITION_KINDS, nondefault_attention_switches
from t5pegasus.models import bert, gpt, t5
from t5pegasus.models import layers as model_layers
from t5pegasus.models.layers import MultiHeadAttention

RERoPE = ("rerope", "leaky_rerope")
# Small windows / feature counts so every switch matters at length 16.
SMALL = dict(rerope_window=3, rerope_leaky=4.0, performer_features=16, nystrom_landmarks=4)
B, N = 2, 16


def bert_cfg(**kw) -> tp.BertConfig:
    return tp.BertConfig.preset("tiny", **{**SMALL, **kw})


def gpt_cfg(**kw) -> tp.GPTConfig:
    # BERT's feed-forward width, so both families run the same eager kernels (fewer first-use compiles).
    return tp.GPTConfig.preset("tiny", **{**SMALL, "intermediate_size": 64, **kw})


def t5_cfg(**kw) -> tp.T5Config:
    return tp.T5Config.preset("tiny", **kw)


def random_params(model: nn.Module, *args, std: float = 0.02, seed: int = 0):
    """Parameters of the model's shape from numpy (no jitted init per configuration): norms' scales one,
    biases zero, every other leaf N(0, std)."""
    shapes = tp.models.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *args)["params"]))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        if name in ("bias", "mlm_bias"):
            return jnp.zeros(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def token_batch(vocab: int, seed: int = 0, pad_last: int = 3) -> tuple[jnp.ndarray, jnp.ndarray]:
    """[B, N] ids in 5..vocab and the validity mask (row 1 right-padded by `pad_last`)."""
    ids = np.random.default_rng(seed).integers(5, vocab, (B, N))
    valid = np.ones((B, N), bool)
    if pad_last:
        valid[1, -pad_last:] = False
        ids[1, -pad_last:] = 0
    return jnp.asarray(ids, jnp.int32), jnp.asarray(valid)


def next_tokens(x: jnp.ndarray) -> jnp.ndarray:
    """x shifted left by one, the last column zero (its weight then hides it): [B, N] like the logits."""
    return jnp.roll(x, -1, axis=1).at[:, -1].set(jnp.zeros((), x.dtype))


def masked_ce(logits, targets, weights) -> jnp.ndarray:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(ce * weights) / jnp.sum(weights)


# ---------------------------------------------------------------- every valid combination trains

def valid(family: str, kind: str, position: str) -> bool:
    """The combination rules of docs/attention.md (which the configs enforce)."""
    if kind != "softmax" and position in RERoPE:
        return False
    return not (kind == "nystrom" and family in ("gpt", "unilm"))


GRID = list(itertools.product(("bert", "gpt", "unilm"), ATTENTION_KINDS, POSITION_KINDS))
REFUSED = [c for c in GRID if not valid(*c)]
# UniLM is the BERT family with another mask: every BERT position kind trains bidirectionally above; with the
# UniLM mask, the kinds whose computation depends on it (absolute, rotary, symmetric ReRoPE + RealFormer), for
# softmax and for the linear kinds that apply the mask (linear, performer: learned and rope).
VALID = [c for c in GRID if valid(*c) and (c[0] != "unilm" or c[2] in ("learned", "rope", "leaky_rerope"))]
EXTRA = [("unilm", "softmax", "rerope", True)]  # RealFormer on (its ReRoPE path adds the carried scores)


def family_setup(family: str, kind: str, position: str, realformer: bool = False):
    """(model, params, loss(params, key)) for a tiny model of that family on a fixed batch."""
    ids, valid_ = token_batch(128)
    overrides = dict(attention_kind=kind, position_kind=position, realformer=realformer)
    if family == "gpt":
        model = tp.models.GPT(gpt_cfg(**overrides))
        params = random_params(model, ids)

        def loss(p, key):
            logits = model.apply({"params": p}, ids, valid_, deterministic=False, rngs={"features": key})
            return masked_ce(logits, next_tokens(ids), next_tokens(valid_))
    else:
        model = tp.models.Bert(bert_cfg(attention="unilm" if family == "unilm" else "bidirectional", **overrides))
        segments = jnp.asarray(np.arange(N) >= N // 2, jnp.int32)[None].repeat(B, 0)
        params = random_params(model, ids, segments)

        def loss(p, key):
            out = model.apply({"params": p}, ids, segments, valid_, deterministic=False, rngs={"features": key})
            return masked_ce(out.logits, ids, valid_)
    return model, params, loss


def adamw_losses(params, loss, steps: int = 2, lr: float = 1e-2):
    """Losses before each of `steps` AdamW updates and after the last one, and the first gradients."""
    opt = optax.adamw(lr)
    state, losses, first = opt.init(params), [], None
    grad_fn = jax.value_and_grad(loss)
    for i in range(steps):
        value, grads = grad_fn(params, jax.random.key(i))
        first = grads if first is None else first
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(value))
    return losses + [float(loss(params, jax.random.key(steps)))], first


def assert_trains(losses, grads, attention_grads) -> None:
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.isfinite(g).all()) for g in leaves), "non-finite gradient"
    for g in attention_grads:
        assert float(jnp.abs(g).max()) > 0, "no gradient reaches the attention projections"
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 1e-3, losses


@pytest.mark.parametrize("family,kind,position,realformer", [(*c, False) for c in VALID] + EXTRA,
                         ids=lambda v: str(v))
def test_every_valid_combination_trains(family, kind, position, realformer):
    _, params, loss = family_setup(family, kind, position, realformer)
    losses, grads = adamw_losses(params, loss)
    attention = grads["layers_0"]["attention"]
    assert_trains(losses, grads, [attention["query"]["kernel"], attention["key"]["kernel"]])


@pytest.mark.parametrize("position,realformer", [("relative_bias", True), ("rope", False)])
def test_t5_position_kinds_train(position, realformer):
    cfg = t5_cfg(position_kind=position, realformer=realformer)
    model = tp.models.T5(cfg)
    enc, enc_valid = token_batch(cfg.vocab_size, seed=1)
    dec, dec_valid = token_batch(cfg.vocab_size, seed=2, pad_last=0)
    params = random_params(model, enc, dec, std=0.2)
    assert ("relpos_bias" in params["encoder"]) == (position == "relative_bias")

    def loss(p, key):
        logits = model.apply({"params": p}, enc, dec, enc_valid, deterministic=False)
        return masked_ce(logits, next_tokens(dec), next_tokens(dec_valid))

    losses, grads = adamw_losses(params, loss)
    decoder = grads["decoder"]["layers_0"]
    assert_trains(losses, grads, [grads["encoder"]["layers_0"]["attention"]["query"]["kernel"],
                                  decoder["self_attention"]["key"]["kernel"]])


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("family,kind,position", REFUSED, ids=lambda v: str(v))
def test_invalid_combinations_are_refused(family, kind, position):
    make = gpt_cfg if family == "gpt" else bert_cfg
    extra = {} if family == "gpt" else {"attention": "unilm" if family == "unilm" else "bidirectional"}
    with pytest.raises(tp.UserError, match=r"invalid (Bert|GPT)Config: .*(needs attention.kind='softmax'|no causal)"):
        make(attention_kind=kind, position_kind=position, **extra)


@pytest.mark.parametrize("make,overrides,match", [
    (bert_cfg, dict(attention_kind="flash"), "attention.kind 'flash' is not one of softmax, linear, performer"),
    (gpt_cfg, dict(position_kind="alibi"), "attention.position 'alibi' is not one of learned, rope, rerope"),
    (bert_cfg, dict(rope_layout="neox"), "attention.rope_layout 'neox' is not one of interleaved, half"),
    (gpt_cfg, dict(attention_backend="triton"), "attention.backend 'triton' is not one of auto, einsum, xla"),
    (bert_cfg, dict(attention="causal", attention_kind="nystrom"), "nystrom' has no causal form"),
    (bert_cfg, dict(attention="unilm", attention_kind="nystrom"),
     "mask='unilm' needs attention.kind='softmax', 'linear' or 'performer'"),
    (bert_cfg, dict(attention_kind="linear", realformer=True), "realformer needs attention.kind='softmax'"),
    (bert_cfg, dict(attention_kind="performer", attention_backend="cudnn"), "has no effect"),
    (gpt_cfg, dict(realformer=True, attention_backend="flash"), "has no effect with realformer"),
    (gpt_cfg, dict(position_kind="rope", head_dim=7, hidden_size=28, num_heads=4), "must be even"),
    (gpt_cfg, dict(position_kind="leaky_rerope", rerope_leaky=1.0), "rerope_leaky must be > 1"),
    (bert_cfg, dict(performer_features=0), "performer_features must be positive"),
    (t5_cfg, dict(position_kind="learned"), "attention.position 'learned' is not one of relative_bias, rope"),
    (t5_cfg, dict(position_kind="rope", cross_attention_bias=True), "set cross_attention_bias=False"),
    (t5_cfg, dict(realformer=True, attention_backend="cudnn"), "has no effect with realformer"),
])
def test_invalid_values_name_the_choices(make, overrides, match):
    with pytest.raises(tp.UserError, match=match):
        make(**overrides)


def test_defaults_keep_todays_models_and_configs_round_trip(tmp_path):
    """Defaults are the HF-parity models; a config saved before these fields existed still loads."""
    for cls in (tp.BertConfig, tp.GPTConfig, tp.T5Config):
        cfg = cls.preset("tiny")
        assert cfg.attention.kind == "softmax" and cfg.attention.backend == "auto"
        assert cfg.attention.position == ("relative_bias" if cls is tp.T5Config else "learned")
        assert not cfg.attention.realformer
        old = {k: v for k, v in cfg.to_dict().items() if k != "attention"}
        assert cls.from_dict(old) == cfg
        switched = cfg.replace(position_kind="rope", realformer=True)
        switched.save(tmp_path / f"{cls.family}.json")
        assert cls.load(tmp_path / f"{cls.family}.json") == switched


def test_old_flat_config_files_load(tmp_path):
    """Configs written before the attention switches were nested (flat `attention_kind`, `position_kind`, ...;
    BERT's mask named `attention`) load as the same model; saving writes the nested form."""
    import json

    flat_bert = {"family": "bert", **{k: v for k, v in bert_cfg().to_dict().items() if k not in ("family", "mask",
                                                                                                 "attention")},
                 "attention": "unilm", "attention_kind": "linear", "position_kind": "rope", "rope_base": 500.0,
                 "performer_features": 16, "realformer": False, "attention_backend": "auto"}
    flat_t5 = {"family": "t5", **{k: v for k, v in t5_cfg().to_dict().items() if k not in ("family", "attention")},
               "position_kind": "rope", "rope_layout": "half", "attention_backend": "einsum", "realformer": True}
    for name, values in (("bert", flat_bert), ("t5", flat_t5)):
        (tmp_path / f"{name}.json").write_text(json.dumps(values))
    bert = tp.load_config(tmp_path / "bert.json")
    assert bert.mask == "unilm" and bert.attention == tp.config.AttentionConfig(
        kind="linear", position="rope", rope_base=500.0, performer_features=16)
    t5 = tp.load_config(tmp_path / "t5.json")
    assert t5.attention == tp.config.AttentionConfig(position="rope", rope_layout="half", backend="einsum",
                                                     realformer=True)
    assert json.loads(t5.to_json())["attention"]["position"] == "rope" and "position_kind" not in t5.to_dict()


def test_nondefault_attention_switches_name_what_checkpoints_cannot_hold():
    assert nondefault_attention_switches(bert_cfg()) == {} == nondefault_attention_switches(t5_cfg())
    assert nondefault_attention_switches(gpt_cfg(attention_backend="xla", rope_layout="half")) == {}
    assert nondefault_attention_switches(gpt_cfg(position_kind="rope", realformer=True)) == {
        "position": "rope", "realformer": True}
    assert nondefault_attention_switches(t5_cfg(position_kind="rope")) == {"position": "rope"}


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_cached_decoding_refused_for_causal_linear_kinds(family):
    """A causal BERT or GPT with a linear kind refuses the cache (only UniLM's linear kinds decode with one)."""
    cfg = (bert_cfg(attention="causal") if family == "bert" else gpt_cfg()).replace(attention_kind="performer")
    model = tp.models.Bert(cfg) if family == "bert" else tp.models.GPT(cfg)
    params = random_params(model, jnp.ones((1, 4), jnp.int32))
    with pytest.raises(tp.UserError, match="cached decoding .* attention.kind='softmax' only, not 'performer'"):
        (bert if family == "bert" else gpt).init_cache(model, params, 1, 8)


# ---------------------------------------------------------------- the switches really switch

def capture_attention(model, variables, *args, **kwargs):
    """(module path, positional args, keyword args, output) of every MultiHeadAttention call, in order."""
    seen = []

    def interceptor(next_fun, call_args, call_kwargs, context):
        out = next_fun(*call_args, **call_kwargs)
        if isinstance(context.module, MultiHeadAttention) and context.method_name == "__call__":
            seen.append((context.module.path, call_args, call_kwargs, out))
        return out

    with nn.intercept_methods(interceptor):
        result = model.apply(variables, *args, **kwargs)
    return seen, result


def rotate_complex(x: np.ndarray, positions: np.ndarray, layout: str) -> np.ndarray:
    """RoPE as complex multiplication: pair (a, b) -> (a + ib) e^{i pos theta_k}, theta_k = 10000^(-2k/d)."""
    d = x.shape[-1]
    theta = 10000.0 ** (-np.arange(0, d, 2) / d)
    angle = np.asarray(positions, np.float64)[..., :, None, None] * theta  # [(b,) l, 1, d/2]
    a, b = (x[..., 0::2], x[..., 1::2]) if layout == "interleaved" else (x[..., : d // 2], x[..., d // 2:])
    z = (a + 1j * b) * np.exp(1j * angle)
    out = np.empty_like(x)
    if layout == "interleaved":
        out[..., 0::2], out[..., 1::2] = z.real, z.imag
    else:
        out[..., : d // 2], out[..., d // 2:] = z.real, z.imag
    return out


def reference_attention(p, x, key_mask, scale, positions=None, layout="interleaved", prev=None):
    """Float64 multi-head attention of one layer's params on its input: (output, pre-softmax scores)."""
    f = lambda a: np.asarray(a, np.float64)
    x = f(x)
    q, k, v = (np.einsum("bld,dhk->blhk", x, f(p[n]["kernel"])) + f(p[n]["bias"]) for n in ("query", "key", "value"))
    if positions is not None:
        q, k = rotate_complex(q, positions, layout), rotate_complex(k, positions, layout)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale + (0.0 if prev is None else prev)
    w = np.exp(np.where(key_mask, s, -np.inf) - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd,hdo->bqo", w, v, f(p["out"]["kernel"])) + f(p["out"]["bias"])
    return out, s


@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_bert_rope_layer_equals_direct_computation(layout):
    cfg = bert_cfg(position_kind="rope", rope_layout=layout)
    model = tp.models.Bert(cfg)
    ids, valid_ = token_batch(cfg.vocab_size)
    params = random_params(model, ids, std=0.2)
    assert "position_embeddings" not in params
    calls, _ = capture_attention(model, {"params": params}, ids, mask=valid_)
    assert len(calls) == cfg.num_layers
    for path, args, _, out in calls:
        want, _ = reference_attention(params[path[0]]["attention"], args[0], np.asarray(valid_)[:, None, None, :],
                                      cfg.head_dim**-0.5, np.arange(N), layout)
        np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-5)


def hidden_of(cfg, params, ids, valid_, positions=None):
    out = tp.models.Bert(cfg).apply({"params": params}, ids, mask=valid_, positions=positions)
    return np.asarray(out.hidden)


def test_rotary_positions_are_relative_and_really_switch():
    """Shifting every position by 7 leaves rope / rerope outputs unchanged (scores depend on i - j only) but not
    learned ones; the position kinds share parameters here, yet give different outputs."""
    ids, valid_ = token_batch(128)
    cfg = bert_cfg(position_kind="rope")
    params = random_params(tp.models.Bert(cfg), ids, std=0.2)
    shifted = jnp.arange(N)[None] + 7
    outs = {}
    for position in ("rope", "rerope", "leaky_rerope", "none"):
        c = cfg.replace(position_kind=position)
        outs[position] = hidden_of(c, params, ids, valid_)
        np.testing.assert_allclose(hidden_of(c, params, ids, valid_, shifted), outs[position], rtol=1e-4, atol=1e-5)
    for a, b in itertools.combinations(outs, 2):
        assert np.abs(outs[a] - outs[b]).max() > 1e-3, (a, b)
    # A window wider than the sequence makes ReRoPE plain RoPE.
    wide = hidden_of(cfg.replace(position_kind="leaky_rerope", rerope_window=N), params, ids, valid_)
    np.testing.assert_allclose(wide, outs["rope"], rtol=1e-4, atol=1e-5)
    learned_cfg = bert_cfg()
    learned = random_params(tp.models.Bert(learned_cfg), ids, std=0.2)
    assert np.abs(hidden_of(learned_cfg, learned, ids, valid_, shifted)
                  - hidden_of(learned_cfg, learned, ids, valid_)).max() > 1e-3


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_realformer_equals_manual_residual_score_accumulation(family):
    make = bert_cfg if family == "bert" else gpt_cfg
    cfg = make(realformer=True)
    model = tp.models.Bert(cfg) if family == "bert" else tp.models.GPT(cfg)
    ids, valid_ = token_batch(cfg.vocab_size)
    params = random_params(model, ids, std=0.2)
    calls, result = capture_attention(model, {"params": params}, ids, mask=valid_)
    key_mask = np.asarray(valid_)[:, None, None, :]
    if family == "gpt":
        key_mask = key_mask & np.tril(np.ones((N, N), bool))
    prev = np.zeros((B, cfg.num_heads, N, N))
    for path, args, kwargs, (out, scores) in calls:
        np.testing.assert_allclose(np.asarray(kwargs["prev_scores"]), prev, rtol=1e-4, atol=1e-4)
        want, prev = reference_attention(params[path[0]]["attention"], args[0], key_mask, cfg.head_dim**-0.5,
                                         prev=prev)
        np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(scores), prev, rtol=1e-4, atol=1e-4)
    plain = (tp.models.Bert if family == "bert" else tp.models.GPT)(cfg.replace(realformer=False))
    off = plain.apply({"params": params}, ids, mask=valid_)
    on_hidden = result.hidden if family == "bert" else result
    assert np.abs(np.asarray(getattr(off, "hidden", off)) - np.asarray(on_hidden)).max() > 1e-3


def test_realformer_scanned_equals_unrolled():
    cfg = t5_cfg(position_kind="rope", realformer=True)
    model = tp.models.T5(cfg)
    enc, _ = token_batch(cfg.vocab_size)
    dec, _ = token_batch(cfg.vocab_size, seed=1, pad_last=0)
    params = random_params(model, enc, dec, std=0.2)
    want = model.apply({"params": params}, enc, dec)
    got = tp.models.T5(cfg.replace(scan_layers=True)).apply({"params": tp.models.stack_layers(params)}, enc, dec)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_hierarchical_positions_extend_the_table_exactly():
    """With a table as long as the input the hierarchical model is the learned one; with a 4-row table it
    equals a learned model holding the extended 16-row table (and the plain 4-row model cannot run at all)."""
    ids, valid_ = token_batch(128)
    full = bert_cfg(max_position_embeddings=N)
    params = random_params(tp.models.Bert(full), ids, std=0.2)
    np.testing.assert_allclose(hidden_of(full.replace(position_kind="hierarchical"), params, ids, valid_),
                               hidden_of(full, params, ids, valid_), rtol=1e-5, atol=1e-6)
    short = full.replace(max_position_embeddings=4)
    table = params["position_embeddings"]["embedding"][:4]
    extended = {**params, "position_embeddings": {"embedding": hierarchical_table(table, N)}}
    want = hidden_of(full, extended, ids, valid_)
    short_params = {**params, "position_embeddings": {"embedding": table}}
    got = hidden_of(short.replace(position_kind="hierarchical"), short_params, ids, valid_)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(got - hidden_of(full, params, ids, valid_)).max() > 1e-3
    with pytest.raises(tp.UserError, match=f"{N} tokens is longer than the model's 4 positions"):
        hidden_of(short, short_params, ids, valid_)  # the plain table ends at row 4


def test_performer_features_fixed_at_evaluation_and_redrawn_in_training():
    cfg = bert_cfg(attention_kind="performer")
    model = tp.models.Bert(cfg)
    ids, valid_ = token_batch(cfg.vocab_size)
    params = random_params(model, ids, std=0.2)
    run = lambda c, **kw: np.asarray(tp.models.Bert(c).apply({"params": params}, ids, mask=valid_, **kw).hidden)
    train = lambda c, seed: run(c, deterministic=False, rngs={"features": jax.random.key(seed)})
    np.testing.assert_array_equal(run(cfg), run(cfg))
    np.testing.assert_array_equal(train(cfg, 1), train(cfg, 1))
    assert np.abs(train(cfg, 1) - train(cfg, 2)).max() > 1e-4 and np.abs(train(cfg, 1) - run(cfg)).max() > 1e-4
    # Without the stream, or with redraw off, training uses the fixed evaluation features.
    np.testing.assert_array_equal(run(cfg, deterministic=False), run(cfg))
    fixed = cfg.replace(performer_redraw=False)
    np.testing.assert_array_equal(train(fixed, 1), run(cfg))


def unilm_batch(vocab: int, source: int = 12):
    """ids (row 1's source right-padded), their validity and segment ids [0] * source + [1] * (N - source)."""
    ids, _ = token_batch(vocab, pad_last=0)
    ids = ids.at[1, 8:source].set(0)
    seg = jnp.asarray(np.arange(N) >= source, jnp.int32)[None].repeat(B, 0)
    return ids, ids != 0, seg


def elu1(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_unilm_linear_layer_equals_masked_quadratic_form(position):
    """Every layer of a UniLM BERT with attention_kind='linear' computes, per head, the float64 quadratic form
    elu1(q) elu1(k)^T masked by the UniLM mask and key padding, normalised row-wise (RoPE before the feature
    map); the bidirectional model's output differs."""
    cfg = bert_cfg(attention="unilm", attention_kind="linear", position_kind=position)
    model = tp.models.Bert(cfg)
    ids, valid_, seg = unilm_batch(cfg.vocab_size)
    params = random_params(model, ids, seg, std=0.2)
    calls, result = capture_attention(model, {"params": params}, ids, seg, valid_)
    assert len(calls) == cfg.num_layers
    mask = np.asarray(bert.attention_mask("unilm", valid_, seg))[:, 0]  # [b, q, k]
    f = lambda a: np.asarray(a, np.float64)
    for path, args, _, out in calls:
        p = params[path[0]]["attention"]
        x = f(args[0])
        q, k, v = (np.einsum("bld,dhk->blhk", x, f(p[n]["kernel"])) + f(p[n]["bias"])
                   for n in ("query", "key", "value"))
        if position == "rope":
            q, k = rotate_complex(q, np.arange(N), "interleaved"), rotate_complex(k, np.arange(N), "interleaved")
        a = np.einsum("bqhm,bkhm->bhqk", elu1(q), elu1(k)) * mask[:, None]
        heads = np.einsum("bhqk,bkhd->bqhd", a / a.sum(-1, keepdims=True), v)
        want = np.einsum("bqhd,hdo->bqo", heads, f(p["out"]["kernel"])) + f(p["out"]["bias"])
        np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-5)
    bidirectional = hidden_of(cfg.replace(attention="bidirectional"), params, ids, valid_)
    real = np.asarray(valid_)
    assert np.abs(bidirectional[real] - np.asarray(result.hidden)[real]).max() > 1e-3


@pytest.mark.parametrize("kind", ["linear", "performer"])
def test_unilm_linear_kinds_hide_later_targets(kind):
    """A later target token does not reach earlier positions; a source token reaches every position."""
    cfg = bert_cfg(attention="unilm", attention_kind=kind)
    ids, valid_, seg = unilm_batch(cfg.vocab_size)
    params = random_params(tp.models.Bert(cfg), ids, seg, std=0.2)
    run = lambda x: np.asarray(tp.models.Bert(cfg).apply({"params": params}, x, seg, valid_).hidden)
    base = run(ids)
    later = run(ids.at[:, N - 2].set(9))
    np.testing.assert_allclose(later[:, :N - 2], base[:, :N - 2], rtol=1e-5, atol=1e-6)
    assert np.abs(later[:, N - 2:] - base[:, N - 2:]).max() > 1e-4
    source = run(ids.at[:, 2].set(9))
    assert np.abs(source - base).max(axis=-1).min() > 1e-6  # every position of both rows moved


def test_nystrom_real_tokens_ignore_padding_content():
    cfg = bert_cfg(attention_kind="nystrom")
    ids, valid_ = token_batch(cfg.vocab_size)
    params = random_params(tp.models.Bert(cfg), ids, std=0.2)
    a = hidden_of(cfg, params, ids, valid_)
    b = hidden_of(cfg, params, ids.at[1, -3:].set(7), valid_)
    np.testing.assert_allclose(a[1, :-3], b[1, :-3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["bert", "gpt", "t5"])
def test_attention_backend_reaches_the_softmax_kernel(family, monkeypatch):
    seen = []
    real = model_layers.dot_product_attention

    def spy(*args, backend="auto", **kwargs):
        seen.append(backend)
        return real(*args, backend=backend, **kwargs)

    monkeypatch.setattr(model_layers, "dot_product_attention", spy)
    ids, _ = token_batch(128, pad_last=0)
    if family == "t5":
        model, args = tp.models.T5(t5_cfg(attention_backend="xla")), (ids, ids)
    else:
        cfg = (bert_cfg if family == "bert" else gpt_cfg)(attention_backend="xla")
        model, args = (tp.models.Bert if family == "bert" else tp.models.GPT)(cfg), (ids,)
    jax.eval_shape(lambda p: model.apply({"params": p}, *args), random_params(model, *args))  # tracing is enough
    assert seen and set(seen) == {"xla"}


# ---------------------------------------------------------------- cached decoding with the switches

def sharpen(params, factor: float):
    """Kernels and tables times `factor`: peaky attention, so a wrong position or score shows in the output."""
    return jax.tree_util.tree_map(lambda x: x * factor if x.ndim >= 2 else x, params)


@pytest.mark.parametrize("overrides", [dict(position_kind="rope"), dict(realformer=True, cross_attention_bias=True)],
                         ids=str)
def test_t5_cached_decoding_equals_full_forward(overrides):
    cfg = t5_cfg(**overrides)
    model = tp.models.T5(cfg)
    enc, enc_valid = token_batch(cfg.vocab_size, pad_last=4)
    dec, _ = token_batch(cfg.vocab_size, seed=1, pad_last=0)
    dec = dec[:, :5]
    params = sharpen(random_params(model, enc, dec, std=0.2), 3.0)
    full = model.apply({"params": params}, enc, dec, enc_valid)
    encoded = model.apply({"params": params}, enc, enc_valid, method=tp.models.T5.encode)
    cache = t5.init_cache(model, params, encoded, enc_valid, max_length=dec.shape[1])
    for t in range(dec.shape[1]):
        logits, cache = t5.decode_step(model, params, cache, encoded, enc_valid, dec[:, t:t + 1])
        np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(full[:, t]), rtol=1e-4, atol=1e-4)


GPT_DECODING = [dict(position_kind="rope", rope_layout="half"), dict(position_kind="leaky_rerope", realformer=True),
                dict(position_kind="hierarchical", max_position_embeddings=4)]


PROMPT = 12  # every GPT/UniLM decoding test: a 12-token prefill chunk, then single tokens up to N (shared shapes)


def gpt_decode(model, params, ids, mask, positions=None):
    """Logits [B, N, vocab] from a cached prefill of PROMPT tokens, then one token per step."""
    cache = gpt.init_cache(model, params, batch_size=B, max_length=N)
    pos = (lambda a, b: None) if positions is None else (lambda a, b: positions[:, a:b])
    outs = []
    for a, b in [(0, PROMPT)] + [(t, t + 1) for t in range(PROMPT, N)]:
        logits, variables = model.apply({"params": params, "cache": cache}, ids[:, a:b],
                                        None if b == a + 1 else mask[:, a:b], pos(a, b), decode=True,
                                        mutable=["cache"])
        outs.append(logits)
        cache = variables["cache"]
    return np.asarray(jnp.concatenate(outs, 1))


@pytest.mark.parametrize("overrides", GPT_DECODING, ids=str)
def test_gpt_cached_decoding_equals_full_forward(overrides):
    """A prompt chunk with padding inside it, then one token at a time (slot positions)."""
    cfg = gpt_cfg(**overrides)
    model = tp.models.GPT(cfg)
    ids, _ = token_batch(cfg.vocab_size, pad_last=0)
    valid_ = jnp.ones(ids.shape, bool).at[1, 3:5].set(False)
    params = sharpen(random_params(model, ids, std=0.2), 2.0)
    full = np.asarray(model.apply({"params": params}, ids, valid_))
    got = gpt_decode(model, params, ids, valid_)
    real = np.asarray(valid_)
    np.testing.assert_allclose(got[real], full[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("position", ["rope", "rerope"])
def test_gpt_decoding_with_left_padding_and_row_positions(position):
    """As the generate adapter runs it: left padding, positions counting real tokens only, so a row's logits
    equal those of its unpadded prompt run alone (ReRoPE reads the positions stored in the cache)."""
    cfg = gpt_cfg(position_kind=position)
    model = tp.models.GPT(cfg)
    ids, _ = token_batch(cfg.vocab_size, pad_last=0)
    pad = 3
    valid_ = jnp.ones(ids.shape, bool).at[1, :pad].set(False)
    positions = jnp.maximum(jnp.cumsum(valid_, axis=1) - 1, 0)
    params = sharpen(random_params(model, ids, std=0.2), 2.0)
    got = gpt_decode(model, params, ids, valid_, positions)
    # The same real tokens right-padded instead (default positions 0.., padding at the end): uncached forward.
    right = ids.at[1].set(jnp.roll(ids[1], -pad))
    want = np.asarray(model.apply({"params": params}, right, jnp.roll(valid_, -pad, axis=1)))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1, pad:], want[1, :N - pad], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("overrides", [dict(position_kind="rope"), dict(position_kind="leaky_rerope", realformer=True),
                                       dict(attention_kind="linear"),
                                       dict(attention_kind="performer", position_kind="rope")], ids=str)
def test_unilm_cached_decoding_equals_full_forward(overrides):
    """Source in one cached call (bidirectional inside it, symmetric ReRoPE), then target tokens one by one.
    The linear kinds attend each chunk to the cached keys with the UniLM visibility (no running state)."""
    cfg = bert_cfg(attention="unilm", **overrides)
    model = tp.models.Bert(cfg)
    ids, _ = token_batch(cfg.vocab_size, pad_last=0)
    ids = ids.at[1, 8:PROMPT].set(0)  # a shorter source, right-padded
    valid_ = ids != 0
    seg = jnp.asarray(np.arange(N) >= PROMPT, jnp.int32)[None].repeat(B, 0)
    params = sharpen(random_params(model, ids, seg, std=0.2), 2.0)
    full = np.asarray(model.apply({"params": params}, ids, seg).hidden)
    cache = bert.init_cache(model, params, batch_size=B, max_length=N)
    out, cache = bert.decode_step(model, params, cache, ids[:, :PROMPT], seg[:, :PROMPT], valid_[:, :PROMPT])
    hidden = [out.hidden]
    for t in range(PROMPT, N):
        out, cache = bert.decode_step(model, params, cache, ids[:, t:t + 1], seg[:, t:t + 1])
        hidden.append(out.hidden)
    real = np.asarray(valid_)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(hidden, 1))[real], full[real], rtol=1e-4, atol=1e-4)
