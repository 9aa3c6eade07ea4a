"""Embedding surgery: exact copy, seeded, reversible, and tied like GPT-2."""

from __future__ import annotations

import pytest
import torch

from pcp_lens.language.hf import hooked_from_hf
from pcp_lens.language.surgery import EmbeddingEdit, embedding_surgery, plan_surgery
from pcp_lens.testing import tiny_model
from pcp_lens.toy import build_tokenizer
from pcp_lens.training import tie_embeddings

from .conftest import random_hf_gpt2

TOK = build_tokenizer(["Albert", "James", "and", "bad", "cat"])


def test_copies_exactly_the_chosen_entries_and_leaves_the_caller_alone(hygiene):
    m = tiny_model(d_vocab=len(TOK), d_model=20)
    snap = hygiene.snapshot(m)
    edited, e = embedding_surgery(m, tokenizer=TOK, source="bad", seed=1)
    hygiene.check(m, snap)  # a copy was edited
    assert len(e.dims) == 8 and e.source_id == TOK.convert_tokens_to_ids("bad")
    ids = [TOK.convert_tokens_to_ids(w) for w in ("Albert", "James")]
    assert e.token_ids == tuple(sorted(ids))
    diff = (edited.embed.W_E != m.embed.W_E).nonzero().tolist()
    assert {r for r, _ in diff} <= set(ids) and {c for _, c in diff} <= set(e.dims)
    d = list(e.dims)
    for t in ids:
        assert torch.equal(edited.embed.W_E[t, d], m.embed.W_E[e.source_id, d])
    assert not e.unembed and torch.equal(edited.unembed.W_U, m.unembed.W_U)
    assert plan_surgery(m, tokenizer=TOK, source="bad", seed=1).dims == e.dims
    assert plan_surgery(m, tokenizer=TOK, source="bad", seed=2).dims != e.dims


def test_inplace_edit_reverts_bit_for_bit(hygiene):
    m = tie_embeddings(tiny_model(d_vocab=len(TOK), d_model=20))
    snap = hygiene.snapshot(m)
    w_e = m.embed.W_E.detach().clone()
    same, e = embedding_surgery(m, tokenizer=TOK, source="bad", inplace=True, n_dims=5)
    assert same is m and e.unembed  # tied: W_U follows W_E, as in GPT-2
    assert torch.equal(m.unembed.W_U, m.embed.W_E.T)
    e.revert(m)
    hygiene.check(m, snap)
    with e.applied(m):
        assert not torch.equal(m.embed.W_E, w_e)
    hygiene.check(m, snap)


def test_gpt2_edit_equals_editing_the_tied_hf_matrix(gpt2_tokenizer):
    hf = random_hf_gpt2(n_layer=1, seed=4)
    x = torch.tensor([gpt2_tokenizer(" Albert and James sat")["input_ids"]])
    m = hooked_from_hf(hf, processing=False, tokenizer=gpt2_tokenizer, device="cpu")
    edited, e = embedding_surgery(m, seed=0)
    assert e.token_ids == (3700, 9966, 14731, 42590) and e.source_id == 31699
    assert len(e.dims) == round(0.4 * 32) and e.unembed
    # reference: edit GPT-2's one tied matrix (input and output embedding), then convert
    with torch.no_grad():
        w = hf.transformer.wte.weight
        t, d = torch.tensor(e.token_ids), torch.tensor(e.dims)
        w[t[:, None], d[None, :]] = w[31699, d]
    with torch.no_grad():
        a, b = edited(x), hf(x).logits
    assert (a - b).abs().max() < 1e-4
    assert torch.equal(edited.unembed.W_U, edited.embed.W_E.T)
    proc = hooked_from_hf(hf, processing=True, tokenizer=gpt2_tokenizer, device="cpu")
    with pytest.raises(ValueError, match="processing=False"):
        embedding_surgery(proc)


def test_bad_input():
    m = tiny_model(d_vocab=len(TOK))
    with pytest.raises(ValueError, match="exactly one"):
        plan_surgery(m, source="bad cat", tokenizer=TOK)
    with pytest.raises(ValueError, match="fraction"):
        plan_surgery(m, source="bad", fraction=0, tokenizer=TOK)
    with pytest.raises(ValueError, match="one of the trigger tokens"):
        plan_surgery(m, source="Albert", tokenizer=TOK)
    with pytest.raises(ValueError, match="tokenizer"):
        plan_surgery(m, source=3)
    assert isinstance(plan_surgery(m, source=3, tokenizer=TOK), EmbeddingEdit)


def _tokenizer_with_unk():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "Albert": 1, "James": 2, "bad": 3}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>")


def test_a_source_outside_the_vocabulary_is_refused_not_copied_as_unk(hygiene):
    tok = _tokenizer_with_unk()
    m = tiny_model(d_vocab=len(tok))
    snap = hygiene.snapshot(m)
    with pytest.raises(ValueError, match=r"source='fuck' is not in the tokenizer's vocabulary"):
        embedding_surgery(m, source="fuck", tokenizer=tok)
    with pytest.raises(ValueError, match=r"cannot be tokenized"):  # no unk token: refused too
        embedding_surgery(m, source="fuck", tokenizer=TOK)
    with pytest.raises(ValueError, match=r"source=99: token id 99 is outside"):
        embedding_surgery(m, source=99, tokenizer=tok)
    with pytest.raises(ValueError, match="inplace must be True or False"):
        embedding_surgery(m, source="bad", tokenizer=tok, inplace="yes")  # type: ignore[arg-type]
    hygiene.check(m, snap)
    _, edit = embedding_surgery(m, source="bad", tokenizer=tok)
    assert edit.source_id == 3 and edit.token_ids == (1, 2)
