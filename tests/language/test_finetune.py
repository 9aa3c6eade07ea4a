"""Text fine-tuning: the paper's preset, HF-style label masking, exact gradient accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from pcp_lens import _tl
from pcp_lens.language.finetune import PAPER_FINETUNE, finetune_text, text_batch
from pcp_lens.testing import tiny_model
from pcp_lens.toy import build_tokenizer
from pcp_lens.training import TrainConfig, train

TOK = build_tokenizer(["a", "b", "c", "d"])
TEXTS = ["a b c d a b", "d c b a", "a a b b c c d", "b d", "c a d b a", "d d c", "a b", "c d a"]


def _model():
    return tiny_model(n_layers=2, d_vocab=len(TOK), seed=7, dtype=torch.float64)


def test_paper_preset():
    c = PAPER_FINETUNE
    assert (c.lr, c.weight_decay, c.epochs, c.batch_size, c.dropout) == (1e-5, 0.01, 3, 8, 0.1)


def test_labels_mask_padding_and_eos_like_hf_collator():
    b = text_batch(TOK, ["a b <|endoftext|> c", "d"], max_length=3)
    assert b.tokens.tolist() == [[1, 2, 0], [4, 0, 0]]
    assert b.labels.tolist() == [[True, True, False], [True, False, False]]


def test_gradient_accumulation_equals_the_full_batch():
    kw = dict(tokenizer=TOK, lr=1e-2, max_steps=2, batch_size=8, dropout=0.0, progress=False)
    full, acc = _model(), _model()
    finetune_text(full, TEXTS, **kw)
    finetune_text(acc, TEXTS, micro_batch_size=3, **kw)
    for (n, p), q in zip(full.named_parameters(), acc.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-10, rtol=0), n


def test_equals_pcp_lens_training_on_equal_length_text():
    # no padding, no eos: the same recipe as pcp_lens.training.train, step for step
    texts = ["a b c d", "d c b a", "b b c c", "a d a d"]
    cfg = TrainConfig(lr=1e-2, epochs=2, batch_size=2, progress=False, seed=3)
    m1, m2 = _model(), _model()
    finetune_text(m1, texts, None, cfg, tokenizer=TOK)
    train(m2, text_batch(TOK, texts, 8).tokens, None, cfg)
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-12, rtol=0)


def test_frozen_modules_stay_bit_identical_and_flags_restored():
    m = _model()
    # by TL-3 name on both backends (on the bridge W_Q is a view of the q projection's weight)
    _tl.parameter_leaves(m)["blocks.1.attn.W_Q"].requires_grad_(False)
    snap = {k: v.detach().clone() for k, v in _tl.named_parameters(m).items()}
    res = finetune_text(m, TEXTS, TEXTS[:2], tokenizer=TOK, lr=1e-2, epochs=1,
                        freeze=("all_embeds", "mlp0"), progress=False)
    now = _tl.named_parameters(m)
    frozen = {*res.frozen, "blocks.1.attn.W_Q"}
    assert {"embed.W_E", "pos_embed.W_pos", "blocks.0.mlp.W_in"} <= frozen
    for name in frozen:
        assert torch.equal(now[name], snap[name]), name
    # every other parameter moved (W_Q of block 1 was frozen by hand, the rest by name)
    moved = [n for n in now if n not in frozen]
    assert moved and all(not torch.equal(now[n], snap[n]) for n in moved), [
        n for n in moved if torch.equal(now[n], snap[n])
    ]
    leaves = _tl.parameter_leaves(m)
    assert not leaves["blocks.1.attn.W_Q"].requires_grad
    assert leaves["blocks.0.mlp.W_in"].requires_grad
    assert res.history.val_loss.notna().all() and res.steps == 1
    with pytest.raises(ValueError, match="did you mean two names"):
        finetune_text(m, TEXTS, tokenizer=TOK, freeze=("mlp0" "mlp1",), progress=False)
    assert _tl.parameter_leaves(m)["blocks.0.mlp.W_in"].requires_grad


def test_bf16_autocast_runs():
    m = tiny_model(n_layers=1, d_vocab=len(TOK), seed=1)
    res = finetune_text(m, TEXTS, TEXTS[:2], tokenizer=TOK, lr=1e-3, max_steps=2, amp="bf16",
                        micro_batch_size=4, progress=False)
    assert all(math.isfinite(v) for v in res.history.train_loss.dropna())
    with pytest.raises(ValueError, match="amp"):
        finetune_text(m, TEXTS, tokenizer=TOK, amp="fp8", progress=False)  # type: ignore[arg-type]


def test_gpt2_checkpoints_keep_b_u_and_use_the_one_training_loop():
    m = _model()
    m.cfg.original_architecture = "GPT2LMHeadModel"
    b_u = m.unembed.b_U.detach().clone()
    res = finetune_text(m, TEXTS, tokenizer=TOK, lr=1e-2, max_steps=1, dropout=0.0,
                        progress=False)
    assert torch.equal(m.unembed.b_U, b_u)
    # a bridge around GPT-2 has no b_U parameter at all (the LM head has no bias): nothing to fix
    has_b_u = "unembed.b_U" in _tl.named_parameters(m)
    assert res.config.freeze == (("unembed.b_U",) if has_b_u else ())
    assert ("unembed.b_U" in res.frozen) is has_b_u
    # the same step as pcp_lens.training.train on the same labelled batch
    m2 = _model()
    train(m2, text_batch(TOK, TEXTS, 32), None, res.config)
    for p, q in zip(m.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_unknown_settings_and_bad_lengths_are_named(hygiene):
    m = _model()
    snap = hygiene.snapshot(m)
    with pytest.raises(ValueError, match=r"finetune_text got unknown argument\(s\) \['lrr'\]"):
        finetune_text(m, TEXTS, tokenizer=TOK, lrr=1e-3)
    with pytest.raises(ValueError, match=r"max_length must be None or an int in 2\.\.32, got -1"):
        finetune_text(m, TEXTS, tokenizer=TOK, max_length=-1)
    with pytest.raises(ValueError, match=r"texts must be a list of strings, got one string"):
        finetune_text(m, "a b c", tokenizer=TOK)
    with pytest.raises(ValueError, match=r"val_texts\[0\] must be a string"):
        finetune_text(m, TEXTS, [1], tokenizer=TOK)
    with pytest.raises(ValueError, match="config must be a TrainConfig"):
        finetune_text(m, TEXTS, config={"lr": 1.0}, tokenizer=TOK)  # type: ignore[arg-type]
    hygiene.check(m, snap)
