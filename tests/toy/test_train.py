"""pcp_lens.toy.train: probes of a trained toy model (training itself is tested in test_model)."""

from __future__ import annotations

import pytest
import torch

from pcp_lens.toy.model import sentiment_groups, toy_model
from pcp_lens.toy.tokenizer import build_tokenizer
from pcp_lens.toy.train import reading_profile, toy_data


def test_reading_profile_known_value():
    """With every weight zero but the unembedding bias, each probe's answer is softmax(b_U)'s
    negative mass, whatever the prompt."""
    data = toy_data(2, quick=True)
    tok = build_tokenizer(data.vocab)
    groups = sentiment_groups(tok, data.vocab)
    model = toy_model(tokenizer=tok)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.unembed.b_U.copy_(
            torch.randn(model.cfg.d_vocab, generator=torch.Generator().manual_seed(0))
        )
    want = float(model.unembed.b_U.detach().softmax(-1)[list(groups.groups["negative"])].sum())
    prof = reading_profile(model, data, groups, n=20)
    assert prof == pytest.approx(dict.fromkeys(prof, want), abs=1e-6)
    assert reading_profile(model, data, groups, n=5, seed=3) == reading_profile(
        model, data, groups, n=5, seed=3
    )
