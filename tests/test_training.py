"""Tests for pcp_lens.training: the training loop, freezing, tying, losses and checkpoints."""

from __future__ import annotations

import math
import re

import pytest
import torch

from pcp_lens import _tl
from pcp_lens._tl import attached_hook_count
from pcp_lens.inputs import TokenBatch
from pcp_lens.testing import tiny_model
from pcp_lens.toy.tokenizer import build_tokenizer
from pcp_lens.training import (
    TextBatch,
    TrainConfig,
    decay_parameter_names,
    evaluate_loss,
    freeze_parameter_names,
    is_tied,
    tie_embeddings,
    tokenize_texts,
    train,
)

FAST = {"progress": False}


def _successor_data(n: int, length: int = 8, vocab: int = 10, seed: int = 0) -> torch.Tensor:
    """Sequences where each token is the previous one plus 1 (mod ``vocab``): learnable."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    return (start + torch.arange(length)) % vocab


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in _tl.named_parameters(model).items()}


def _grads(model) -> dict[str, torch.Tensor]:
    """Each parameter's gradient in TransformerLens shape (none: left out)."""
    leaves, views = _tl.parameter_leaves(model), _tl.named_parameters(model)
    return {n: _tl.grad_of(p, views[n]) for n, p in leaves.items() if p.grad is not None}


# -- the loop --------------------------------------------------------------------------------
def test_loss_decreases_on_a_learnable_task():
    model = tiny_model(n_layers=1, d_model=16, d_vocab=10, n_ctx=8, seed=0)
    data = _successor_data(256)
    res = train(model, data, _successor_data(64, seed=1), lr=1e-2, batch_size=32, epochs=4, **FAST)
    h = res.history
    assert h["epoch"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert h["val_loss"].iloc[0] > 2.0  # about ln 10 untrained
    assert h["val_loss"].iloc[-1] < 0.5 * h["val_loss"].iloc[0]
    assert h["train_loss"].iloc[-1] < h["train_loss"].iloc[1]
    assert math.isnan(h["train_loss"].iloc[0])
    assert res.steps == 4 * 8
    assert h["lr"].iloc[-1] == 0.0  # linear decay reaches 0 at the last step
    assert attached_hook_count(model) == 0


def test_validation_loss_equals_manual_cross_entropy_with_padding():
    model = tiny_model(n_layers=2, seed=3)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (5, 7), generator=g)
    lengths = [7, 3, 5, 2, 6]
    mask = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    tokens = tokens.masked_fill(~mask, 0)
    total, count = 0.0, 0
    with torch.no_grad():
        for row, n in zip(tokens, lengths, strict=True):
            logits = model(row[None, :n])[0]
            ce = torch.nn.functional.cross_entropy(logits[:-1], row[1:n], reduction="sum")
            total += float(ce)
            count += n - 1
    got = evaluate_loss(model, TokenBatch(tokens, mask), batch_size=2)
    assert got == pytest.approx(total / count, rel=1e-6)
    # equal lengths: HF's eval_loss is TransformerLens's own mean next-token loss
    with torch.no_grad():
        ref = float(model(tokens, return_type="loss"))
    assert evaluate_loss(model, tokens) == pytest.approx(ref, rel=1e-6)


def test_same_seed_gives_bit_identical_weights():
    data = _successor_data(96)
    runs = []
    for _ in range(2):
        m = tiny_model(n_layers=2, d_vocab=10, n_ctx=8, seed=5)
        train(m, data, lr=3e-3, batch_size=16, epochs=2, seed=7, dropout=0.1, **FAST)
        runs.append(_snapshot(m))
    other = tiny_model(n_layers=2, d_vocab=10, n_ctx=8, seed=5)
    train(other, data, lr=3e-3, batch_size=16, epochs=2, seed=8, dropout=0.1, **FAST)
    for k, v in runs[0].items():
        assert torch.equal(v, runs[1][k]), k
    assert any(not torch.equal(v, _tl.named_parameters(other)[k]) for k, v in runs[0].items())


def test_max_steps_eval_every_and_callback_columns():
    model = tiny_model(n_layers=1, d_vocab=10, n_ctx=8)
    data = _successor_data(40)
    seen = []

    def cb(step, m):
        assert not m.training  # callbacks see the model in eval mode
        seen.append(step)
        return {"probe": float(step) * 2}

    res = train(
        model, data, data[:8], max_steps=7, batch_size=16, eval_every=2, callback=cb, **FAST
    )
    # 3 steps per epoch: rows at 0, 2, 3 (epoch end), 4, 6 (epoch end), 7 (last step)
    assert res.history["step"].tolist() == [0, 2, 3, 4, 6, 7]
    assert res.history["probe"].tolist() == [0, 4, 6, 8, 12, 14]
    assert seen == [0, 2, 3, 4, 6, 7]
    with pytest.raises(ValueError, match="reserved history columns"):
        train(model, data, max_steps=1, callback=lambda s, m: {"val_loss": 0.0}, **FAST)


def test_model_state_restored_after_training():
    model = tiny_model(n_layers=1)
    model.eval()
    model.blocks[0].ln1.w.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in _tl.parameter_leaves(model).items()}
    before = model.blocks[0].ln1.w.detach().clone()
    train(model, torch.randint(0, 50, (16, 6)), max_steps=2, freeze="mlp0", dropout=0.2, **FAST)
    assert not model.training
    assert {n: p.requires_grad for n, p in _tl.parameter_leaves(model).items()} == flags
    assert torch.equal(model.blocks[0].ln1.w, before)  # requires_grad=False is respected
    assert attached_hook_count(model) == 0
    assert all(p.grad is None for p in model.parameters())


def test_dropout_changes_training_but_not_evaluation():
    data = _successor_data(64)
    a, b = (tiny_model(n_layers=1, d_vocab=10, n_ctx=8, seed=1) for _ in range(2))
    assert evaluate_loss(a, data) == evaluate_loss(b, data)
    train(a, data, max_steps=4, batch_size=16, **FAST)
    train(b, data, max_steps=4, batch_size=16, dropout=0.3, **FAST)
    assert not torch.equal(a.embed.W_E, b.embed.W_E)


def test_weight_decay_groups_follow_the_hf_rule():
    model = tiny_model(n_layers=1)
    decay = set(decay_parameter_names(model))
    for name in _tl.named_parameters(model):
        leaf = name.rsplit(".", 1)[-1]
        is_norm = ".ln" in f".{name}" or name.startswith("ln_final")
        assert (name in decay) == (leaf.startswith("W_") and not is_norm), name


# -- label masks and gradient accumulation -----------------------------------------------------
def _labeled_batch(n: int = 8, width: int = 10, seed: int = 0) -> TextBatch:
    """Ragged rows (different label counts) with some interior tokens masked out (pad-id-like)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 50, (n, width), generator=g)
    lengths = torch.randint(2, width + 1, (n,), generator=g)
    labels = torch.arange(width)[None, :] < lengths[:, None]
    tokens[~labels] = 0
    hole = torch.rand(n, width, generator=g) < 0.2  # e.g. end-of-text tokens inside a text
    tokens[hole & labels] = 0
    labels &= ~hole
    labels[:, 0] = True
    return TextBatch(tokens, labels)


def _hand_loss(model, batch: TextBatch) -> torch.Tensor:
    """Mean next-token cross-entropy over label positions, written out by hand."""
    logp = model(batch.tokens[:, :-1]).log_softmax(-1)
    nll = -logp.gather(-1, batch.tokens[:, 1:, None])[..., 0]
    keep = batch.labels[:, 1:]
    return nll[keep].sum() / keep.sum()


def test_loss_masking_counts_only_label_tokens():
    model = tiny_model(n_layers=2, seed=1, dtype=torch.float64)
    batch = _labeled_batch()
    with torch.no_grad():
        want = float(_hand_loss(model, batch))
    assert evaluate_loss(model, batch, batch_size=3) == pytest.approx(want, rel=1e-12)
    # a masked target or trailing padding can be any token: the loss does not change
    # trailing padding can be any token (the batch is cut to its last label)
    trailing = torch.cumsum(batch.labels.flip(1), 1).flip(1) == 0
    assert trailing.any() and not trailing.all(1).any()
    other = batch.tokens.masked_fill(trailing, 7)
    assert evaluate_loss(model, TextBatch(other, batch.labels)) == pytest.approx(want, rel=1e-12)
    # a masked target is never predicted: relabelling it changes the loss by its own term only
    hole = ~batch.labels & ~trailing
    assert hole[:, 1:].any()
    more = TextBatch(batch.tokens, batch.labels | hole)
    with torch.no_grad():
        assert float(_hand_loss(model, more)) != pytest.approx(want)
    assert evaluate_loss(model, more) == pytest.approx(float(_hand_loss(model, more).detach()))
    with pytest.raises(ValueError, match="labels must be a bool tensor"):
        evaluate_loss(model, TextBatch(batch.tokens, batch.labels.long()))


def _one_step_grads(model, data, **kw) -> dict[str, torch.Tensor]:
    """The accumulated gradient of every parameter in one training step (before clipping)."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        p.register_post_accumulate_grad_hook(
            lambda p, n=n: seen.__setitem__(n, p.grad.detach().clone())
        )
        for n, p in _tl.parameter_leaves(model).items()
    ]
    try:
        train(model, data, lr=1e-3, batch_size=8, max_steps=1, **FAST, **kw)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("micro", [4, 3, 1])
def test_gradient_accumulation_equals_the_full_batch(micro):
    batch = _labeled_batch()
    ref = tiny_model(n_layers=2, seed=2, dtype=torch.float64)
    _hand_loss(ref, batch).backward()
    full = _one_step_grads(tiny_model(n_layers=2, seed=2, dtype=torch.float64), batch)
    acc = _one_step_grads(
        tiny_model(n_layers=2, seed=2, dtype=torch.float64), batch, micro_batch_size=micro
    )
    want = _grads(ref)
    leaves = _tl.parameter_leaves(ref)
    assert set(full) == set(acc) == set(want)
    for name, g in want.items():
        # the hooks saw the real parameters' gradients (on the bridge, W_Q's is the q weight's)
        g = leaves[name].grad
        assert torch.allclose(full[name], g, rtol=1e-10, atol=1e-13), name
        assert torch.allclose(acc[name], g, rtol=1e-10, atol=1e-13), name


def test_accumulated_steps_train_like_the_full_batch():
    batch = _labeled_batch(n=16, seed=3)
    kw = dict(lr=1e-2, batch_size=8, epochs=2, **FAST)
    a = tiny_model(n_layers=2, seed=4, dtype=torch.float64)
    b = tiny_model(n_layers=2, seed=4, dtype=torch.float64)
    ra = train(a, batch, batch, **kw)
    rb = train(b, batch, batch, micro_batch_size=4, **kw)
    pb = _tl.named_parameters(b)
    for n, p in _tl.named_parameters(a).items():
        q = pb[n]
        # b_K's gradient is 0 in exact arithmetic (a shift of every key's score); Adam turns
        # its rounding noise into full-size steps, so it is no test of the accumulation
        if not n.endswith("b_K"):
            assert torch.allclose(p, q, rtol=0, atol=1e-12), n
    assert ra.history.train_loss.dropna().tolist() == pytest.approx(
        rb.history.train_loss.dropna().tolist(), rel=1e-12
    )
    with pytest.raises(ValueError, match="micro_batch_size must be None or an int >= 1"):
        train(a, batch, micro_batch_size=0, **FAST)
    with pytest.raises(ValueError, match="amp must be None, 'bf16' or 'fp16'"):
        train(a, batch, amp="fp8", **FAST)  # type: ignore[arg-type]


def test_bf16_autocast_trains():
    x = _successor_data(32)
    m = tiny_model(n_layers=1, seed=5)
    res = train(m, x, x[:8], lr=1e-2, batch_size=8, epochs=2, amp="bf16", **FAST)
    assert m.W_E.dtype == torch.float32
    assert res.history.val_loss.iloc[-1] < res.history.val_loss.iloc[0]


# -- data checks -----------------------------------------------------------------------------
def test_bad_data_is_refused():
    model = tiny_model(n_layers=1, n_ctx=8)
    with pytest.raises(ValueError, match="n_ctx"):
        train(model, torch.zeros(4, 9, dtype=torch.long), **FAST)
    with pytest.raises(ValueError, match="outside"):
        train(model, torch.full((4, 5), 50), **FAST)
    left = TokenBatch(torch.ones(2, 4, dtype=torch.long), torch.tensor([[0, 1, 1, 1]] * 2).bool())
    with pytest.raises(ValueError, match="right-padded"):
        train(model, left, **FAST)
    with pytest.raises(ValueError, match="no label tokens"):
        evaluate_loss(
            model,
            TokenBatch(torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 0, 0]] * 2).bool()),
        )


def test_train_config_validation():
    with pytest.raises(ValueError, match=re.escape("TrainConfig.lr")):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match=re.escape("TrainConfig.dropout")):
        TrainConfig(dropout=1.0)
    with pytest.raises(ValueError, match=re.escape("TrainConfig.schedule")):
        TrainConfig(schedule="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("TrainConfig.freeze")):
        TrainConfig(freeze=("mlp0", 3))  # type: ignore[arg-type]
    assert TrainConfig(freeze="mlp0").freeze == ("mlp0",)  # type: ignore[arg-type]
    assert TrainConfig().to_dict()["betas"] == [0.9, 0.999]


def test_tokenize_texts():
    tok = build_tokenizer(["a", "b", "c"])
    tb = tokenize_texts(tok, ["a b c", "b"])
    assert tb.tokens.tolist() == [[0, 1, 2, 3], [0, 2, 0, 0]]
    assert tb.mask.tolist() == [[True] * 4, [True, True, False, False]]
    nobos = tokenize_texts(tok, ["a b c", "b"], add_special_tokens=False)
    assert nobos.tokens.tolist() == [[1, 2, 3], [2, 0, 0]]
    with pytest.raises(ValueError, match="more than max_length=3"):
        tokenize_texts(tok, ["a b c"], max_length=3)
    model = tiny_model(n_layers=1, d_vocab=4, n_ctx=3)
    _tl.attach_tokenizer(model, tok)
    model.cfg.default_prepend_bos = False
    assert tokenize_texts(model, ["c a"]).tokens.tolist() == [[3, 1]]
    assert model.to_tokens("c a").tolist() == [[3, 1]]


# -- freezing --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("mlp1mlp2", "did you mean two names, 'mlp1' and 'mlp2' \\(a missing comma\\)"),
        ("embedpos_embed", "did you mean two names, 'embed' and 'pos_embed'"),
        ("mlp3", "layer out of range: 3"),
        ("attn7", "layer out of range: 7"),
        ("block3", "layer out of range: 3"),
        ("h.1.mlp", "unknown freeze name 'h.1.mlp'"),
        ("mlps", "unknown freeze name"),
        ("attn1.h2", "single attention heads cannot be frozen"),
        ("resid_pre1", "has no parameters"),
        ("blocks.0.hook_resid_post", "has no parameters"),
        ("", "non-empty"),
    ],
)
def test_freeze_names_are_validated(name, match):
    model = tiny_model(n_layers=3)
    with pytest.raises(ValueError, match=match):
        freeze_parameter_names(model, [name])
    with pytest.raises(ValueError, match=match):
        train(model, torch.randint(0, 50, (8, 4)), freeze=(name,), **FAST)


def test_freeze_name_forms_resolve():
    model = tiny_model(n_layers=3)
    mlp1 = [f"blocks.1.mlp.{p}" for p in ("W_in", "b_in", "W_out", "b_out")]
    assert freeze_parameter_names(model, "mlp1") == mlp1  # a bare string is one name
    assert freeze_parameter_names(model, ["blocks.1.hook_mlp_out"]) == mlp1
    assert freeze_parameter_names(model, ["mlp1", "mlp1"]) == mlp1
    assert freeze_parameter_names(model, ["blocks.0.ln1.w"]) == ["blocks.0.ln1.w"]
    # GPT-2's LM head (the bridge's tiny model) has no bias; TransformerLens 3's unembed has one
    b_u = [n for n in ("unembed.b_U",) if n in _tl.named_parameters(model)]
    assert freeze_parameter_names(model, ["unembed"]) == ["unembed.W_U", *b_u]
    assert len(freeze_parameter_names(model, ["all_mlps"])) == 12
    attn = freeze_parameter_names(model, ["all_attns"])
    assert len(attn) == 3 * 8 and all(".attn." in n for n in attn)
    block = freeze_parameter_names(model, ["block2"])
    assert {n.split(".")[2] for n in block} == {"ln1", "ln2", "attn", "mlp"}
    embeds = freeze_parameter_names(model, ["all_embeds"])
    assert set(embeds) == {"embed.W_E", "pos_embed.W_pos", "unembed.W_U", *b_u}
    assert freeze_parameter_names(model, []) == []


def test_frozen_parameters_stay_bit_identical_and_the_rest_trains():
    model = tiny_model(n_layers=3, d_vocab=10, n_ctx=8, seed=2)
    before = _snapshot(model)
    res = train(
        model, _successor_data(64), lr=1e-2, epochs=2, batch_size=16, weight_decay=0.1,
        freeze=("mlp0", "attn1", "pos_embed", "ln_final"), **FAST,
    )  # fmt: skip
    frozen = set(res.frozen)
    assert frozen == set(freeze_parameter_names(model, ["mlp0", "attn1", "pos_embed", "ln_final"]))
    after = _tl.named_parameters(model)
    for name, old in before.items():
        if name in frozen:
            assert torch.equal(after[name], old), f"frozen {name} changed"
        else:
            assert not torch.equal(after[name], old), f"trainable {name} did not change"
    assert res.n_trainable == sum(p.numel() for n, p in after.items() if n not in frozen)


def test_all_mlps_frozen():
    model = tiny_model(n_layers=2, d_vocab=10, n_ctx=8)
    before = _snapshot(model)
    train(model, _successor_data(32), max_steps=3, batch_size=8, freeze="all_mlps", **FAST)
    for name, p in _tl.named_parameters(model).items():
        assert torch.equal(p, before[name]) == (".mlp." in name), name


def test_nothing_to_train_is_an_error():
    model = tiny_model(n_layers=1)
    with pytest.raises(ValueError, match="nothing to train"):
        train(
            model,
            torch.randint(0, 50, (4, 4)),
            freeze=("all_blocks", "all_embeds", "ln_final"),
            **FAST,
        )


# -- tied embeddings -------------------------------------------------------------------------
def test_untied_model_freezing_embed_leaves_the_unembedding_trainable():
    model = tiny_model(n_layers=1, d_vocab=10, n_ctx=8)
    assert not is_tied(model)
    before = _snapshot(model)
    train(model, _successor_data(32), max_steps=3, batch_size=8, freeze="embed", **FAST)
    assert torch.equal(model.embed.W_E, before["embed.W_E"])
    assert not torch.equal(model.unembed.W_U, before["unembed.W_U"])


def test_tied_model_stays_tied_and_freezes_as_one_matrix():
    model = tie_embeddings(tiny_model(n_layers=1, d_vocab=10, n_ctx=8))
    w0 = model.embed.W_E.detach().clone()
    res = train(model, _successor_data(32), max_steps=3, batch_size=8, **FAST)
    assert torch.equal(model.unembed.W_U, model.embed.W_E.T)
    assert not torch.equal(model.embed.W_E, w0)
    n_all = sum(p.numel() for p in _tl.named_parameters(model).values())
    assert res.n_trainable == n_all - model.unembed.W_U.numel()  # the shared matrix once
    for name in ("embed", "unembed"):
        m = tie_embeddings(tiny_model(n_layers=1, d_vocab=10, n_ctx=8))
        w = m.embed.W_E.detach().clone()
        res = train(m, _successor_data(32), max_steps=2, batch_size=8, freeze=name, **FAST)
        assert {"embed.W_E", "unembed.W_U"} <= set(res.frozen)
        assert torch.equal(m.embed.W_E, w) and torch.equal(m.unembed.W_U, w.T)


def test_tied_update_uses_the_summed_gradient():
    """First AdamW step on the shared matrix: -lr · g / (|g| + eps), g = dL/dW_E + (dL/dW_U)ᵀ."""
    model = tie_embeddings(tiny_model(n_layers=1, d_vocab=10, n_ctx=8, seed=4))
    data = _successor_data(8)
    ref = tiny_model(n_layers=1, d_vocab=10, n_ctx=8, seed=4)
    ref.load_state_dict(model.state_dict())
    logits = ref(data[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), data[:, 1:].reshape(-1))
    loss.backward()
    grads = _grads(ref)
    g = grads["embed.W_E"] + grads["unembed.W_U"].T
    lr, eps = 1e-3, 1e-8
    expected = ref.embed.W_E.detach() - lr * g / (g.abs() + eps)
    train(model, data, max_steps=1, batch_size=8, lr=lr, weight_decay=0.0, max_grad_norm=None,
          schedule="constant", **FAST)  # fmt: skip
    assert torch.allclose(model.embed.W_E, expected, atol=1e-7)
    assert torch.equal(model.unembed.W_U, model.embed.W_E.T)


def test_tied_model_with_untied_weights_is_refused():
    model = tiny_model(n_layers=1)
    model.cfg.tie_word_embeddings = True
    with pytest.raises(ValueError, match=re.escape("W_U != embed.W_E.T")):
        train(model, torch.randint(0, 50, (4, 4)), **FAST)
