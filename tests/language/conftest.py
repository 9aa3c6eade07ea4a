"""Fixtures for the language tests: a small random HF GPT-2 and the exact GPT-2 tokenizer."""

from __future__ import annotations

import pytest
import torch


def random_hf_gpt2(vocab_size: int = 50257, n_layer: int = 2, seed: int = 0, **kw):
    """A random ``GPT2LMHeadModel`` whose LayerNorms and biases are random too (eval mode)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=n_layer, n_embd=32, n_head=4, vocab_size=vocab_size, n_positions=64, **kw
    )
    hf = GPT2LMHeadModel(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif ".ln_" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    return hf


@pytest.fixture(scope="module")
def hf_gpt2():
    return random_hf_gpt2()
