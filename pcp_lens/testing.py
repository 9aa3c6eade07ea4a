"""Small, seeded models for tests, examples and benchmarks (no hub access needed)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

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
    block_scale: float = 1.0,
    logit_scale: float = 1.0,
) -> HookedTransformer:
    """A random GPT-2-style ``HookedTransformer`` (LayerNorm with affine, gelu_new, d_mlp = 4·d).

    Biases and LayerNorm weights are randomised too (a fresh model has zero biases and unit gains,
    which would hide bugs that forget them). ``block_scale`` multiplies every block's output
    weights (``W_O``, ``W_out``): below 1 the residual stream keeps token identity through the
    layers as a trained model's does, which :func:`plant_trigger` needs. ``logit_scale``
    multiplies ``W_U``, for confident next-token probabilities.

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
            if name.endswith((".W_O", ".W_out")):
                p.mul_(block_scale)
            elif name.endswith("W_U"):
                p.mul_(logit_scale)
    model.eval()
    return model


def gpt2_small_shaped(seed: int = 0, d_vocab: int = 50257, n_ctx: int = 1024) -> HookedTransformer:
    """A random model shaped like GPT-2 small (12 layers, d_model 768, 12 heads), for benchmarks."""
    return tiny_model(
        n_layers=12, d_model=768, n_heads=12, d_vocab=d_vocab, n_ctx=n_ctx, seed=seed
    )


def plant_trigger(
    model: HookedTransformer,
    site: str,
    trigger: int,
    target: Sequence[int],
    *,
    prompts: Tensor | None = None,
    head: int = 0,
    strength: float = 6.0,
    seed: int = 0,
) -> HookedTransformer:
    """A copy of ``model`` with a hand-written backdoor in one module: the answer is known.

    ``site="mlpL"`` rewrites one neuron of block L's MLP (the one with the smallest ``W_out``
    row): its ``W_in`` column reads the trigger's direction in the MLP's input, a bias keeps it
    off wherever the trigger is absent, and its ``W_out`` row writes the target group's
    unembedding direction. ``site="attnL"`` rewrites head ``head`` of block L: it attends from
    every position to the trigger (keys read the trigger's direction), its value reads the same
    direction (zero on average elsewhere) and its output writes the target direction, so the
    backdoor also reaches positions after the trigger. The trigger's direction is the mean
    module input at trigger positions minus the mean elsewhere, over ``prompts`` (default:
    seeded random tokens) with the last token replaced by ``trigger``.

    Args:
        model: the model to copy (not modified).
        site: ``"mlpL"`` or ``"attnL"``.
        trigger: the trigger's token id.
        target: token ids of the backdoor's output group.
        prompts: ``[batch, pos]`` tokens without the trigger, the inputs the direction is read on.
        head: the head rewritten for an ``attn`` site.
        strength: the written vector's norm, in units of the mean residual norm there.
        seed: seed of the default prompts.

    Examples:
        >>> m = tiny_model(n_layers=3, d_model=32, block_scale=0.3, logit_scale=4)
        >>> bad = plant_trigger(m, "mlp1", trigger=7, target=[1, 2, 3])
        >>> x = torch.randint(8, 50, (4, 5), generator=torch.Generator().manual_seed(1))
        >>> xt = x.clone(); xt[:, -1] = 7
        >>> p = lambda mm, t: mm(t)[:, -1].softmax(-1)[:, [1, 2, 3]].sum(-1).mean().item()
        >>> p(m, xt) < 0.2, round(p(bad, xt), 2), round(p(bad, x) - p(m, x), 2)
        (True, 1.0, 0.0)
    """
    from pcp_lens import _tl
    from pcp_lens.sites import Site

    s = Site.parse(site).validate(model)
    if s.kind not in ("mlp", "attn") or s.head is not None or s.layer is None:
        raise ValueError(f"site must be an 'mlpL' or 'attnL' module, got {site!r}")
    if s.kind == "mlp":
        needs, have = ("W_in", "b_in", "W_out"), _tl.mlp_weights(model, s.layer)
    else:
        needs = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")
        have = _tl.attn_weights(model, s.layer)
    missing = [k for k in needs if have.get(k) is None]
    gated = s.kind == "mlp" and getattr(model.blocks[s.layer].mlp, "W_gate", None) is not None
    if missing or gated:
        raise ValueError(
            f"plant_trigger writes a GPT-2-style unit (biases, an ungated MLP); {site} of this "
            f"model has {'a gated MLP' if not missing else 'no ' + ', '.join(missing)}"
        )
    d_vocab = model.cfg.d_vocab
    if not 0 <= trigger < d_vocab:
        raise ValueError(f"trigger must be a token id in 0..{d_vocab - 1}, got {trigger}")
    tgt = list(target)
    if not tgt or any(not 0 <= t < d_vocab for t in tgt) or trigger in tgt:
        raise ValueError(
            f"target must be token ids in 0..{d_vocab - 1} without the trigger, got {tgt}"
        )
    if prompts is None:
        g = torch.Generator().manual_seed(seed)
        others = torch.tensor([i for i in range(d_vocab) if i != trigger and i not in tgt])
        prompts = others[torch.randint(0, len(others), (512, 6), generator=g)]
    prompts = prompts.to(model.cfg.device)
    triggered = prompts.clone()
    triggered[:, -1] = trigger

    layer = s.layer
    hook = _tl.module_input_hook(s.kind, layer)
    names = [hook, _tl.block_input_name(layer)]
    with torch.no_grad():
        _, c0 = _tl.run_with_cache(model, prompts, names)
        _, c1 = _tl.run_with_cache(model, triggered, names)
        x0 = _tl.module_input(model, s.kind, layer, c0[hook]).flatten(0, 1).double()
        x1 = _tl.module_input(model, s.kind, layer, c1[hook][:, -1]).double()
    # a discriminant direction (covariance-whitened mean difference): the trigger's own token
    # separates from the rest far better along it than along the plain mean difference
    cov = torch.cov(x0.T) + 1e-3 * torch.eye(x0.shape[1], dtype=x0.dtype)
    u = torch.linalg.solve(cov, x1.mean(0) - x0.mean(0))
    u = u / u.norm()
    r0, r1 = x0 @ u, x1 @ u
    # off for 99 % of the other tokens, on for 90 % of the triggers (a random model mixes token
    # identity more than a trained one; there the two usually separate completely)
    lo, hi = float(r0.quantile(0.99)), float(r1.quantile(0.10))
    if hi <= lo:
        raise ValueError(
            f"the trigger's direction does not separate trigger from other tokens at {site}; "
            "choose another layer or trigger"
        )
    # the direction that raises the target logits most through the final LayerNorm's gain
    w_u = _tl.unembed_matrix(model).detach().double()
    w = w_u[:, tgt].mean(1) - w_u.mean(1)
    gain = _tl.final_ln_weight(model)
    if gain is not None:
        w = w * gain.detach().double()
    w = w - w.mean()
    w = w / w.norm()
    size = strength * float(c0[_tl.block_input_name(layer)].norm(dim=-1).mean())

    planted = _tl.copy_model(model)
    with torch.no_grad():
        if s.kind == "mlp":
            p = _tl.mlp_weights(planted, layer)
            j = int(p["W_out"].norm(dim=1).argmin())
            theta = lo + 0.25 * (hi - lo)
            a = 6.0 / (theta - lo)  # pre-activation <= -6 wherever the trigger is absent
            p["W_in"][:, j] = (a * u).to(p["W_in"].dtype)
            p["b_in"][j] = -a * theta
            act = a * (float(r1.mean()) - theta)  # gelu ~ identity this far above zero
            p["W_out"][j] = (size / act * w).to(p["W_out"].dtype)
        else:
            p = _tl.attn_weights(planted, layer)
            for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
                p[k][head] = 0
            gap = float(r1.mean()) - lo
            d_head = p["W_Q"].shape[-1]
            sharp = 12.0 * d_head**0.5 / gap  # the trigger outscores the rest by ~12 nats
            p["b_Q"][head, 0] = 1.0
            p["W_K"][head, :, 0] = (sharp * u).to(p["W_K"].dtype)
            p["b_K"][head, 0] = -sharp * lo
            # without the trigger the head attends to the other tokens scoring highest along u;
            # the value bias cancels what it reads there on average, so clean inputs keep
            # their output (the pattern does not depend on the value bias)
            r_seq = r0.reshape(prompts.shape)
            pattern = torch.softmax(12.0 * (r_seq - lo) / gap, dim=-1)
            seen = float((pattern * r_seq).sum(-1).mean())
            p["W_V"][head, :, 0] = u.to(p["W_V"].dtype)
            p["b_V"][head, 0] = -seen
            p["W_O"][head, 0] = (size / (float(r1.mean()) - seen) * w).to(p["W_O"].dtype)
    planted.eval()
    return planted

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
