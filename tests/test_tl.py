"""The TransformerLens touchpoints: module inputs, unembedding, resuming blocks from a KV cache."""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch

from pcp_lens import _tl
from pcp_lens.testing import tiny_model

TOKENS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def caches(model, model_lnpre):
    with torch.no_grad():
        return {
            "LN": model.run_with_cache(TOKENS),
            "LNPre": model_lnpre.run_with_cache(TOKENS),
        }


@pytest.fixture(params=["LN", "LNPre"])
def norm(request, model, model_lnpre, caches):
    m = model if request.param == "LN" else model_lnpre
    assert m.cfg.normalization_type == request.param
    logits, cache = caches[request.param]
    return m, logits, cache


def test_hook_name_helpers(model):
    assert _tl.hook_name("mlp", 1) == "blocks.1.hook_mlp_out"
    assert _tl.hook_name("attn", 0) == "blocks.0.hook_attn_out"
    assert _tl.hook_name("z", 2) == "blocks.2.attn.hook_z"
    assert _tl.hook_name("embed", None) == "hook_embed"
    assert _tl.hook_name("pos_embed", None) == "hook_pos_embed"
    assert _tl.block_input_name(2) == "blocks.2.hook_resid_pre"
    assert _tl.module_input_hook("attn", 1) == "blocks.1.ln1.hook_normalized"
    assert _tl.module_input_hook("mlp", 0) == "blocks.0.ln2.hook_normalized"
    for layer in range(model.cfg.n_layers):
        for kind in ("attn", "mlp", "resid_pre", "resid_mid", "resid_post", "z"):
            assert _tl.hook_name(kind, layer) in model.hook_dict
        assert _tl.block_input_name(layer) in model.hook_dict
        for kind in ("attn", "mlp"):
            assert _tl.module_input_hook(kind, layer) in model.hook_dict


# -- module_input -------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_module_input_is_the_layernorm_output(norm, layer):
    m, _, cache = norm
    block = m.blocks[layer]
    with torch.no_grad():
        mlp_in = _tl.module_input(m, "mlp", layer, cache[f"blocks.{layer}.ln2.hook_normalized"])
        attn_in = _tl.module_input(m, "attn", layer, cache[f"blocks.{layer}.ln1.hook_normalized"])
        torch.testing.assert_close(mlp_in, block.ln2(cache[f"blocks.{layer}.hook_resid_mid"]))
        torch.testing.assert_close(attn_in, block.ln1(cache[f"blocks.{layer}.hook_resid_pre"]))
        # ... and it is what the modules' first matrices see
        torch.testing.assert_close(
            mlp_in @ block.mlp.W_in + block.mlp.b_in, cache[f"blocks.{layer}.mlp.hook_pre"]
        )
        q = torch.einsum("bpd,hde->bphe", attn_in, block.attn.W_Q) + block.attn.b_Q
        torch.testing.assert_close(q, cache[f"blocks.{layer}.attn.hook_q"])
    if m.cfg.normalization_type == "LN":  # the affine is not the identity in these models
        assert not torch.allclose(mlp_in, cache[f"blocks.{layer}.ln2.hook_normalized"], atol=1e-2)


@pytest.mark.skipif(_tl.BACKEND == "bridge", reason="process_weights_ is TransformerLens 3's")
def test_module_input_on_a_folded_model_reproduces_the_original(model, caches):
    """fold_ln moves the LN affine into W_in / W_Q: the normalised vector is then the input."""
    folded = copy.deepcopy(model)
    folded.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=False)
    assert folded.cfg.normalization_type == "LNPre"
    _, orig = caches["LN"]
    with torch.no_grad():
        _, fc = folded.run_with_cache(TOKENS)
    for layer in range(model.cfg.n_layers):
        x = fc[f"blocks.{layer}.ln2.hook_normalized"]
        got = _tl.module_input(folded, "mlp", layer, x)
        assert got is x
        mlp = folded.blocks[layer].mlp
        with torch.no_grad():
            torch.testing.assert_close(
                got @ mlp.W_in + mlp.b_in,
                orig[f"blocks.{layer}.mlp.hook_pre"],
                atol=1e-5,
                rtol=1e-5,
            )


# -- unembed ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (2, 3, 4)])
def test_unembed_equals_ln_final_then_unembed(norm, shape):
    m, _, _ = norm
    d = m.cfg.d_model
    x = 3 * torch.randn(*shape, d, generator=torch.Generator().manual_seed(len(shape))) + 1
    with torch.no_grad():
        got = _tl.FinalLogits(m)(x)
        want = m.unembed(m.ln_final(x.reshape(-1, 1, d))).reshape(*shape, m.cfg.d_vocab)
    assert got.shape == (*shape, m.cfg.d_vocab)
    torch.testing.assert_close(got, want)
    if len(shape) == 2:  # TransformerLens' own [batch, pos, d] call
        with torch.no_grad():
            torch.testing.assert_close(got, m.unembed(m.ln_final(x)))


def test_unembed_of_the_last_residual_is_the_models_logits(norm):
    m, logits, cache = norm
    last = m.cfg.n_layers - 1
    with torch.no_grad():
        torch.testing.assert_close(
            _tl.FinalLogits(m)(cache[f"blocks.{last}.hook_resid_post"]), logits
        )
        # one position at a time: the final LayerNorm uses each vector's own scale
        torch.testing.assert_close(
            _tl.FinalLogits(m)(cache[f"blocks.{last}.hook_resid_post"][:, 3]), logits[:, 3]
        )


def test_unembed_casts_to_the_model_dtype(model):
    with torch.no_grad():
        out = _tl.FinalLogits(model)(torch.randn(4, model.cfg.d_model, dtype=torch.float64))
    assert out.dtype == torch.float32


# -- run_blocks ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("start", "stop", "prefix"), [(0, 3, 2), (1, 3, 4), (1, 2, 1), (2, 3, 6), (0, 3, 0)]
)
def test_run_blocks_from_cached_resid_and_keys_values(norm, start, stop, prefix):
    """Resume blocks start..stop-1 for the suffix, behind the prefix's cached keys and values."""
    m, _, cache = norm
    resid = cache[_tl.block_input_name(start)][:, prefix:]
    past = None
    if prefix:
        past = [
            (
                cache[f"blocks.{layer}.attn.hook_k"][:, :prefix],
                cache[f"blocks.{layer}.attn.hook_v"][:, :prefix],
            )
            for layer in range(start, stop)
        ]
    with torch.no_grad():
        out = _tl.run_blocks(m, resid, start, stop, past)
    want = cache[f"blocks.{stop - 1}.hook_resid_post"][:, prefix:]
    assert out.shape == want.shape
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    if prefix:
        with torch.no_grad():  # without the cached prefix the suffix sees different context
            alone = _tl.run_blocks(m, resid, start, stop)
        assert (alone - want).abs().max() > 1e-2
        # the cache entries are frozen: the caller's k/v are untouched and reusable
        with torch.no_grad():
            again = _tl.run_blocks(m, resid, start, stop, past)
        assert torch.equal(again, out)
        assert past is not None and past[0][0].shape[1] == prefix


def test_run_blocks_with_no_blocks_is_identity(model, caches):
    _, cache = caches["LN"]
    r = cache["blocks.1.hook_resid_pre"]
    assert _tl.run_blocks(model, r, 1, 1) is r


# -- hooks, construction, fingerprint ------------------------------------------------------------
def test_attached_hook_count_and_attached_context(model):
    def noop(act, hook):
        return None

    assert _tl.attached_hook_count(model) == 0
    with _tl.attached(
        model, [("blocks.0.hook_mlp_out", noop), ("blocks.1.hook_attn_out", noop)]
    ) as m:
        assert m is model
        assert _tl.attached_hook_count(model) == 2
    assert _tl.attached_hook_count(model) == 0

    class Boom(Exception):
        pass

    def boom(act, hook):
        raise Boom

    with pytest.raises(Boom), _tl.attached(model, [("blocks.0.hook_mlp_out", boom)]):
        model(TOKENS)
    assert _tl.attached_hook_count(model) == 0


def test_attached_hook_count_ignores_permanent_hooks():
    m = tiny_model(n_layers=1)
    m.add_perma_hook("blocks.0.hook_mlp_out", lambda act, hook: None)
    assert _tl.attached_hook_count(m) == 0
    with m.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", lambda act, hook: None)]):
        assert _tl.attached_hook_count(m) == 1
    assert _tl.attached_hook_count(m) == 0


def test_new_model_does_not_warn():
    cfg = _tl.HookedTransformerConfig(
        n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10, act_fn="relu"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = _tl.new_model(cfg)
    assert _tl.is_model(m)


def test_processing_fingerprint(model, model_lnpre):
    fp = _tl.processing_fingerprint(model)
    assert fp == {
        "n_layers": 3,
        "d_model": 16,
        "d_mlp": 64,
        "n_heads": 4,
        "d_vocab": 50,
        "normalization_type": "LN",
        "act_fn": "gelu_new",
        "fold_ln": False,
        "center_writing_weights": False,
        "center_unembed": False,
        "fold_value_biases": False,
    }
    assert all(isinstance(v, bool) for k, v in fp.items() if k.startswith(("fold", "center")))
    fp_pre = _tl.processing_fingerprint(model_lnpre)
    assert fp_pre["fold_ln"] is True
    assert fp_pre["normalization_type"] == "LNPre"
    assert fp != fp_pre


def test_fast_activations_are_bit_identical_and_restored():
    from pcp_lens.testing import tiny_model

    model = tiny_model(n_layers=2, d_model=32, n_heads=4, d_vocab=50, seed=1)
    tokens = torch.randint(0, 50, (3, 6), generator=torch.Generator().manual_seed(0))
    before = [getattr(b.mlp, "act_fn", None) for b in model.blocks]
    with torch.no_grad():
        ref = model(tokens)
        with _tl.fast_activations(model):
            fast = model(tokens)
        assert torch.equal(fast, ref)
        with pytest.raises(RuntimeError, match="boom"), _tl.fast_activations(model):
            raise RuntimeError("boom")
    assert [getattr(b.mlp, "act_fn", None) for b in model.blocks] == before
    # with a graph the in-place formula defers to the original: the same gradients
    grads = []
    for fast in (False, True):
        with _tl.fast_activations(model) if fast else contextlib.nullcontext():
            model(tokens)[:, -1, 0].sum().backward()
        grads.append([None if p.grad is None else p.grad.clone() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
    assert any(g is not None for g in grads[0])
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(*grads, strict=True))


@pytest.mark.parametrize("stop", [1, 2, 3])
def test_run_with_cache_stopping_keeps_every_hook_before_the_stop(stop):
    """With ``stop_at_layer`` the cache holds the stopping block's ``hook_resid_post`` too (the
    bridge once fired its stop before caching it), equal to the full run's; later hooks are
    absent; unknown names are ignored."""
    m = tiny_model(n_layers=3)
    names = [_tl.hook_name(k, ly) for ly in range(3) for k in ("resid_pre", "mlp", "resid_post")]
    _, full = _tl.run_with_cache(m, TOKENS, [*names, "no.such.hook"])
    resid, part = _tl.run_with_cache(m, TOKENS, names, stop_at_layer=stop)
    kept = [nm for nm in names if int(nm.split(".")[1]) < stop]
    assert sorted(k for k in part.cache_dict if k in names) == sorted(kept)
    for nm in kept:
        assert torch.equal(part[nm], full[nm])
    assert torch.equal(resid, full[_tl.hook_name("resid_post", stop - 1)])
