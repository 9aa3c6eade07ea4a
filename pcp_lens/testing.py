"""Small, seeded models for tests, examples and benchmarks (no hub access needed)."""

from __future__ import annotations

import torch

from pcp_lens._tl import HookedTransformer, HookedTransformerConfig, new_model


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
        for name, p in model.named_parameters():
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


def fixed_value_model(
    saturate: float = 10.0, seed: int = 0, d_vocab: int = 40
) -> HookedTransformer:
    """A 2-layer attention-only model (no LayerNorm, float64) whose layer-1 values cannot change.

    Tokens write dimensions 0-7 of the residual and positions dimensions 8-15; every ``W_V``
    reads dimensions 8-15 only and layer 0 writes dimensions 0-7 only. A patch of
    ``resid_pre1`` or of any output of layer 0 then reaches the logits through layer 1's
    attention *pattern* and linear paths only, the case where ``attribution_patching``'s
    ``"atp*"`` is exact; ``saturate`` scales ``W_Q`` and ``W_K`` (sharper patterns).

    Examples:
        >>> fixed_value_model().cfg.attn_only
        True
    """
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=16,
        n_ctx=16,
        d_head=4,
        n_heads=4,
        d_vocab=d_vocab,
        attn_only=True,
        normalization_type=None,
        seed=seed,
        dtype=torch.float64,
    )
    model = new_model(cfg)
    with torch.no_grad():
        model.embed.W_E[:, 8:] = 0
        model.pos_embed.W_pos[:, :8] = 0
        model.blocks[0].attn.W_O[..., 8:] = 0
        model.blocks[0].attn.b_O.zero_()
        model.unembed.W_U.mul_(30)  # effects of order 1
        for blk in model.blocks:
            blk.attn.W_V[:, :8] = 0
            blk.attn.W_Q.mul_(saturate)
            blk.attn.W_K.mul_(saturate)
    model.eval()
    return model
