"""Small, seeded models for tests, examples and benchmarks (no hub access needed)."""

from __future__ import annotations

import torch

from pcp_lens._tl import HookedTransformer, HookedTransformerConfig, named_parameters, new_model


def tiny_model(
    n_layers: int = 2,
    d_model: int = 16,
    n_heads: int = 4,
    d_vocab: int = 50,
    n_ctx: int = 32,
    seed: int = 0,
    normalization_type: str = "LN",
    dtype: torch.dtype = torch.float32,
    device: str | None = "cpu",
) -> HookedTransformer:
    """A random GPT-2-style ``HookedTransformer`` (LayerNorm with affine, gelu_new, d_mlp = 4·d).

    Biases and LayerNorm weights are randomised too (a fresh model has zero biases and unit gains,
    which would hide bugs that forget them).

    Examples:
        >>> tiny_model(n_layers=3).cfg.n_layers
        3
    """
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_ctx=n_ctx,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        d_mlp=4 * d_model,
        d_vocab=d_vocab,
        act_fn="gelu_new",
        normalization_type=normalization_type,
        seed=seed,
        dtype=dtype,
        device=device,
    )
    model = new_model(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in named_parameters(model).items():
            if name.endswith((".b", ".b_in", ".b_out", ".b_O", ".b_Q", ".b_K", ".b_V", "b_U")):
                p.copy_(0.1 * torch.randn(p.shape, generator=g).to(p.dtype))
            elif name.endswith(".w"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g).to(p.dtype))
    model.eval()
    return model


def gpt2_small_shaped(
    seed: int = 0, d_vocab: int = 50257, n_ctx: int = 1024
) -> HookedTransformer:
    """A random model shaped like GPT-2 small (12 layers, d_model 768, 12 heads), for benchmarks."""
    return tiny_model(
        n_layers=12, d_model=768, n_heads=12, d_vocab=d_vocab, n_ctx=n_ctx, seed=seed
    )
