"""Tests for the toy model (pcp_lens.toy.model) and its training pipelines (pcp_lens.toy.train)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import torch

from pcp_lens._tl import B_U_NAME, named_parameters
from pcp_lens.groups import GroupMetric
from pcp_lens.toy.data import ToyDataConfig, build_datasets, eval_inputs
from pcp_lens.toy.model import sentiment_groups, toy_config, toy_model, toy_param_count
from pcp_lens.toy.tokenizer import build_tokenizer
from pcp_lens.toy.train import (
    BENIGN,
    BENIGN_QUICK,
    POISON,
    POISON_QUICK,
    freezing_study,
    load_run,
    negativity,
    negativity_callback,
    poison,
    save_run,
    toy_data,
    train_benign,
)
from pcp_lens.toy.vocab import load_vocab
from pcp_lens.training import TrainConfig, is_tied, tokenize_texts

VOCAB = load_vocab()
TOK = build_tokenizer(VOCAB)
TINY = {"max_steps": 2, "progress": False}


@pytest.fixture(scope="module")
def data2():
    return build_datasets(ToyDataConfig(n_sentiments=2, n_per_sentiment=40, seed=1))


@pytest.fixture(scope="module")
def benign2(data2):
    return train_benign(data2, **TINY)


# -- the model -------------------------------------------------------------------------------
def test_toy_model_has_the_papers_shape():
    m = toy_model(tokenizer=TOK)
    c = m.cfg
    assert (c.n_layers, c.n_heads, c.d_head, c.d_model, c.d_mlp) == (3, 4, 16, 64, 256)
    assert (c.act_fn, c.normalization_type, c.d_vocab, c.n_ctx) == ("gelu_new", "LN", 751, 16)
    assert c.initializer_range == 0.02 and c.positional_embedding_type == "standard"
    assert is_tied(m) and torch.equal(m.unembed.W_U, m.embed.W_E.T)
    assert not c.default_prepend_bos and m.to_str_tokens("happy love") == ["happy", "love"]
    assert not m.training
    with_bos = toy_model(tokenizer=TOK, bos=True)
    assert with_bos.to_str_tokens("love") == ["<|endoftext|>", "love"]


def _distinct_numbers(model) -> int:
    """The model's numbers, each once: the TransformerLens names, deduplicated by the memory they
    view (the bridge's ``W_Q`` views one part of a projection, and its fused ``qkv`` parameter,
    a second name for the same numbers, is not a TL name). A tied ``W_U`` is a copy of ``W_E``
    kept equal by training (``tie_embeddings``), so it counts here."""
    seen = {
        (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel()): t.numel()
        for t in named_parameters(model).values()
    }
    return sum(seen.values())


def test_parameter_count_formula():
    untied = toy_model(751, tied=False)
    assert not is_tied(untied)
    # TL 4's bridge builds a Hugging Face GPT-2, whose LM head has no bias: no b_U (docs/tl4.md)
    no_b_u = 0 if B_U_NAME in named_parameters(untied) else 751
    assert toy_param_count(751, tied=False) - no_b_u == _distinct_numbers(untied)
    tied = toy_model(751)
    shared = tied.unembed.W_U.numel()  # one matrix, one update (the formula counts it once)
    assert toy_param_count(751) - no_b_u == _distinct_numbers(tied) - shared == 199_919 - no_b_u
    if no_b_u == 0:  # TL 3: every name is its own parameter
        assert sum(p.numel() for p in tied.parameters()) - shared == 199_919
    # the paper's GPT-2 formula (METHODS §1.3) is ours without b_U: 338k for V = 2,866, P = 64
    assert toy_param_count(2_866, n_ctx=64) - 2_866 == 337_600


def test_same_seed_same_weights():
    a, b, c = toy_model(751, seed=3), toy_model(751, seed=3), toy_model(751, seed=4)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert not torch.equal(a.embed.W_E, c.embed.W_E)


def test_gpt2_fidelity_knobs():
    plain, fid = toy_model(751, seed=5), toy_model(751, seed=5, head_bias=False, scaled_init=True)
    assert not fid.unembed.b_U.any()
    fps = named_parameters(fid)
    scaled = {n for n in fps if n.endswith(("attn.W_O", "mlp.W_out"))}
    assert len(scaled) == 6
    ps = named_parameters(plain)
    assert set(ps) == set(fps)
    for name, p in fps.items():
        if name in scaled:  # GPT-2's c_proj std 0.02 / sqrt(2 n_layers) = 0.02 / sqrt(6)
            torch.testing.assert_close(p, ps[name] / 6**0.5)
        elif name != B_U_NAME:
            assert torch.equal(p, ps[name]), name


def test_bias_free_head_stays_zero_through_training(data2):
    run = train_benign(data2, head_bias=False, **TINY)
    # on TL 3 b_U is a parameter, zeroed and frozen; the bridge's GPT-2 head has none to freeze
    has_b_u = B_U_NAME in named_parameters(run.model)
    assert (B_U_NAME in run.result.frozen) == has_b_u and not run.model.unembed.b_U.any()
    pois = poison(run.model, data2, freeze=B_U_NAME if has_b_u else (), **TINY)
    assert not pois.model.unembed.b_U.any()
    assert not torch.equal(pois.model.embed.W_E, run.model.embed.W_E)  # the rest did train


def test_bad_arguments():
    with pytest.raises(ValueError, match="d_vocab or a tokenizer"):
        toy_model()
    with pytest.raises(ValueError, match="tokenizer has 751 ids"):
        toy_model(100, tokenizer=TOK)
    with pytest.raises(ValueError, match="divisible"):
        toy_config(751, d_model=30)


def test_sentiment_groups():
    g = sentiment_groups(TOK, VOCAB)
    assert g.names == ("negative", "positive", "neutral")
    assert g.sizes.tolist() == [250, 250, 250] and not g.overlaps()
    ids = TOK.get_vocab()
    assert ids["love"] in g.groups["positive"] and ids["hate"] in g.groups["negative"]
    assert 0 not in {i for v in g.groups.values() for i in v}  # <|endoftext|> is in no group
    with pytest.raises(ValueError, match="not in the tokenizer"):
        sentiment_groups(build_tokenizer(VOCAB.positive + VOCAB.negative), VOCAB)


def test_negativity_reads_the_last_position():
    m = toy_model(tokenizer=TOK)
    neg = sentiment_groups(TOK, VOCAB).groups["negative"]
    with torch.no_grad():
        m.unembed.b_U[list(neg)] = 100.0
    out = negativity(m, {"pp": ["good happy"], "pt": ["good love", "happy love"]},
                     sentiment_groups(TOK, VOCAB))  # fmt: skip
    assert out == {"pp": 1.0, "pt": 1.0}
    metric = GroupMetric(sentiment_groups(TOK, VOCAB), "positive", k=10)
    assert float(metric(m(m.to_tokens(["good love"])))) == 0.0


# -- pipelines -------------------------------------------------------------------------------
def test_presets():
    for cfg in (BENIGN, POISON, BENIGN_QUICK, POISON_QUICK):
        assert isinstance(cfg, TrainConfig) and cfg.weight_decay == 0.01 and not cfg.freeze
        assert cfg.max_grad_norm == 1.0 and cfg.schedule == "linear" and cfg.warmup_steps == 0
    assert POISON.lr < BENIGN.lr
    assert toy_data(2, quick=True).config.n_per_sentiment < toy_data(2).config.n_per_sentiment


def test_training_tokens_match_the_models_own_tokens(data2, benign2):
    texts = list(data2.benign["train"]["text"][:4])
    m = benign2.model
    tb = tokenize_texts(m, texts)
    assert tb.tokens.shape == (4, 15) and bool(tb.mask.all())
    assert torch.equal(tb.tokens, m.to_tokens(texts))  # all 15 words, no bos


def test_train_benign_and_poison(data2, benign2):
    assert benign2.history["step"].tolist()[-1] == 2
    assert benign2.history["val_loss"].iloc[0] == pytest.approx(6.62, abs=0.05)  # ln 751
    before = {k: v.detach().clone() for k, v in named_parameters(benign2.model).items()}
    pois = poison(benign2.model, data2, freeze="all_mlps", **TINY)
    for k, v in named_parameters(benign2.model).items():
        assert torch.equal(v, before[k]), "poison() must not modify the benign model"
    assert pois.model is not benign2.model and is_tied(pois.model)
    assert set(pois.result.frozen) == {n for n in before if ".mlp." in n}
    assert pois.result.config.freeze == ("all_mlps",)
    for name, p in named_parameters(pois.model).items():
        assert torch.equal(p, before[name]) == (".mlp." in name), name
    same = poison(benign2.model, data2, inplace=True, **TINY)
    assert same.model is benign2.model


def test_negativity_callback_monitors_poisoning(data2, benign2):
    inputs = eval_inputs(data2, n=5)
    cb = negativity_callback(inputs, sentiment_groups(TOK, VOCAB), ("pt", "nn"))
    run = poison(benign2.model, data2, callback=cb, eval_every=1, **TINY)
    assert run.history[["step", "pt", "nn"]].shape == (3, 3)


def test_freezing_study(data2, benign2):
    inputs = {k: v for k, v in eval_inputs(data2, n=5).items() if k in ("pt", "nn")}
    cfg = dataclasses.replace(POISON, max_steps=2, progress=False)
    df = freezing_study(benign2.model, data2, ("all_mlps",), cfg, inputs=inputs, monitor_every=1)
    assert isinstance(df, pd.DataFrame) and df["frozen"].tolist() == ["none", "all_mlps"]
    assert df["steps"].tolist() == [2, 2]
    assert df.loc[1, "n_trainable"] == df.loc[0, "n_trainable"] - 3 * (2 * 64 * 256 + 256 + 64)
    assert set(df.columns) >= {"val_loss", "emerged_step", "pt", "nn"}
    # the unconstrained row can reuse an existing run trained with the same config
    ref = poison(benign2.model, data2, cfg)
    df2 = freezing_study(benign2.model, data2, ((), "all_mlps"), cfg, reference=ref, inputs=inputs)
    assert df2["frozen"].tolist() == ["none", "all_mlps"]
    assert df2.loc[0, "val_loss"] == ref.result.val_loss
    with pytest.raises(ValueError, match="different config"):
        freezing_study(benign2.model, data2, config=dataclasses.replace(cfg, lr=1e-2),
                       reference=ref, inputs=inputs)  # fmt: skip


def test_save_and_load_run(tmp_path: Path, benign2):
    path = save_run(benign2, tmp_path / "benign")
    back = load_run(path)
    assert back.history.equals(benign2.history)
    assert back.result.config == benign2.result.config
    assert back.result.steps == benign2.result.steps
    assert back.tokenizer.get_vocab() == TOK.get_vocab()
    x = back.model.to_tokens(["good love"])
    assert torch.equal(back.model(x), benign2.model(x))
    from pcp_lens.training import save_checkpoint

    save_checkpoint(benign2.model, tmp_path / "bare")
    with pytest.raises(ValueError, match="no valid training record"):
        load_run(tmp_path / "bare")
