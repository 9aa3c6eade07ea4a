"""PCP ablation: fitting, the replacement value and its hooks, edits, storage, least squares."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pcp_lens import _tl
from pcp_lens.pcp import (
    PCPReplacement,
    SitePCP,
    factors_from_scales,
    fit_pca,
    fit_pcp,
    least_squares_scales,
    reference_code_directions,
    scales_from_factors,
)
from pcp_lens.testing import tiny_model

D = 16  # d_model of the shared ``model`` fixture


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # tiny tensors: intra-op threading only adds overhead (and is pathological on a busy CPU)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (24, 6), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def pcp(model, tokens) -> PCPReplacement:
    return fit_pcp(model, tokens, ["mlp0", "attn1", "mlp2"], 2, progress=False)


def orthonormal(r: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    return q.T.contiguous()


def module_inputs(model, tokens, layer: int, kind: str = "mlp") -> torch.Tensor:
    """The LayerNorm output (with affine) that the module receives, from a plain cache."""
    ln = "ln2" if kind == "mlp" else "ln1"
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.{ln}.hook_normalized")
    normalized = cache[f"blocks.{layer}.{ln}.hook_normalized"]
    lnm = getattr(model.blocks[layer], ln)
    if hasattr(lnm, "w"):
        return normalized * lnm.w + lnm.b
    return normalized


# ------------------------------------------------------------------------------------------------
# the matrix M: properties
# ------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    d=st.integers(2, 12),
    data=st.data(),
    seed=st.integers(0, 10_000),
)
def test_matrix_symmetric_low_rank_and_eigendecomposition(d, data, seed):
    r = data.draw(st.integers(1, d))
    alpha = data.draw(
        st.lists(st.floats(-5, 5, allow_nan=False), min_size=r, max_size=r).map(np.array)
    )
    assume(np.all(np.abs(alpha) > 1e-2))
    gaps = np.diff(np.sort(alpha))
    assume(r == 1 or gaps.min() > 1e-2)
    u = orthonormal(r, d, seed)
    p = SitePCP("mlp0", u, alpha.tolist())
    m = p.matrix()
    assert torch.equal(m, m.T) or torch.allclose(m, m.T, atol=1e-12, rtol=0)
    assert int(torch.linalg.matrix_rank(m)) <= r
    evals, evecs = torch.linalg.eigh(m)
    nonzero = evals[evals.abs() > 1e-9]
    assert torch.allclose(nonzero.sort().values, torch.tensor(np.sort(alpha)), atol=1e-9)
    for c in range(r):
        i = int((evals - alpha[c]).abs().argmin())
        assert abs(float(evecs[:, i] @ u[c])) == pytest.approx(1.0, abs=1e-8)
    x = torch.randn(3, 5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(p.apply(x), x @ m, atol=1e-10)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=6))
def test_factor_decomposition_round_trip(alpha):
    s, f = factors_from_scales(alpha)
    assert bool((f >= 0).all()) and set(s.tolist()) <= {-1.0, 1.0}
    assert torch.allclose(scales_from_factors(f, s), torch.tensor(alpha, dtype=torch.float64))
    # the sign of f is irrelevant: it enters squared
    assert torch.equal(scales_from_factors(-f, s), scales_from_factors(f, s))


def test_paper_tab_vi_scales():
    # METHODS §8.7: tuned factors m00, m01 with Tab. VI's multipliers s = (-1.2, 0.5)
    a = scales_from_factors([1.0134995205857498, 0.9406299848075284], [-1.2, 0.5])
    assert a.tolist() == pytest.approx([-1.2 * 1.0134995205857498**2, 0.5 * 0.9406299848075284**2])


# ------------------------------------------------------------------------------------------------
# fitting
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", [None, [1]])
def test_streaming_pca_agrees_with_sklearn(model, tokens, positions):
    kw = dict(positions=positions, progress=False)
    a = fit_pca(model, tokens, ["mlp0", "attn1"], 4, method="streaming", **kw)
    b = fit_pca(model, tokens, ["mlp0", "attn1"], 4, method="sklearn", **kw)
    for name in ("mlp0", "attn1"):
        fa, fb = a[name], b[name]
        assert fa.n_samples == fb.n_samples == (24 * 6 if positions is None else 24)
        dots = (fa.components * fb.components).sum(-1)
        assert torch.allclose(dots.abs(), torch.ones(4, dtype=torch.float64), atol=1e-6)
        # same sign convention as scikit-learn, so equal outright
        assert torch.allclose(fa.components, fb.components, atol=1e-5)
        assert torch.allclose(fa.explained_variance, fb.explained_variance, rtol=1e-6)
        assert torch.allclose(fa.explained_variance_ratio, fb.explained_variance_ratio, rtol=1e-6)
        assert torch.allclose(fa.mean, fb.mean, atol=1e-6)
        assert bool((fa.explained_variance[:-1] >= fa.explained_variance[1:]).all())
        assert float(fa.explained_variance_ratio.sum()) <= 1.0


def test_reference_code_directions_match_sklearn_inverse_transform(model, tokens):
    """METHODS §8.3: e = 𝟙/d, keep coordinate l of its PCA transform, inverse-transform, norm."""
    from sklearn.decomposition import PCA

    pcp = fit_pcp(
        model, tokens, "mlp0", 3, directions="reference_code", scales="ones", progress=False
    )
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_mlp_out")
    x = cache["blocks.0.hook_mlp_out"].reshape(-1, D).double().numpy()
    pca = PCA(n_components=3, svd_solver="full").fit(x)
    e = np.ones((1, D)) / np.sum(np.ones(D) ** 2)
    z = pca.transform(e)
    want = []
    for c in range(3):
        zl = np.zeros_like(z)
        zl[0, c] = z[0, c]
        w = pca.inverse_transform(zl)[0]
        want.append(w / np.linalg.norm(w))
    got = pcp.part("mlp0").directions.numpy()
    np.testing.assert_allclose(got, np.array(want), atol=1e-6)
    assert pcp.part("mlp0").kind == "reference_code"
    # with a large mean every direction is close to the mean (the §8.3 consequence)
    mean = torch.full((D,), 5.0, dtype=torch.float64)
    v = orthonormal(2, D, 3)
    cos = reference_code_directions(mean, v) @ (mean / mean.norm())
    assert bool((cos > 0.95).all())


def test_fit_pcp_records_variance_and_fingerprint(model, pcp):
    assert [s.name for s in pcp.sites] == ["mlp0", "attn1", "mlp2"]
    assert dict(pcp.fingerprint) == _tl.processing_fingerprint(model)
    for p in pcp:
        assert p.kind == "principal" and p.rank == 2 and p.bias is None
        assert p.explained_variance is not None and p.explained_variance.shape == (2,)
    df = pcp.summary()
    assert list(df.columns[:5]) == ["site", "layer", "kind", "component", "scale"]
    assert len(df) == 6


def test_fold_ln_model_without_affine(model_lnpre, tokens):
    pcp = fit_pcp(model_lnpre, tokens, "mlp1", 2, progress=False)
    with model_lnpre.hooks(fwd_hooks=pcp.hooks(model_lnpre)):
        _, cache = model_lnpre.run_with_cache(tokens)
    x = cache["blocks.1.ln2.hook_normalized"]  # LNPre: no affine, this is the module input
    assert torch.allclose(cache["blocks.1.hook_mlp_out"], pcp.part("mlp1").apply(x), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# hooks
# ------------------------------------------------------------------------------------------------


def test_hooks_replace_output_with_xM_on_affine_layernorm_output(model, tokens, pcp):
    with model.hooks(fwd_hooks=pcp.hooks(model)):
        _, cache = model.run_with_cache(tokens)
    for p in pcp:
        ln = "ln2" if p.site.kind == "mlp" else "ln1"
        lnm = getattr(model.blocks[p.site.layer], ln)
        x = cache[f"blocks.{p.site.layer}.{ln}.hook_normalized"] * lnm.w + lnm.b
        want = (x.double() @ p.matrix()).float()
        assert torch.allclose(cache[p.site.hook_name], want, atol=1e-5)


def test_rank_d_with_unit_scales_is_identity_and_rank_r_a_projection(model):
    toks = torch.randint(0, 50, (8, 8), generator=torch.Generator().manual_seed(1))
    full = fit_pcp(model, toks, "mlp1", D, scales="ones", progress=False)
    assert torch.allclose(full.matrix("mlp1"), torch.eye(D, dtype=torch.float64), atol=1e-10)
    x = module_inputs(model, toks, 1)
    with model.hooks(fwd_hooks=full.hooks(model)):
        _, cache = model.run_with_cache(toks, names_filter="blocks.1.hook_mlp_out")
    assert torch.allclose(cache["blocks.1.hook_mlp_out"], x, atol=1e-5)
    m = fit_pcp(model, toks, "mlp1", 5, scales="ones", progress=False).matrix("mlp1")
    assert torch.allclose(m @ m, m, atol=1e-10) and torch.allclose(m, m.T, atol=1e-12)


def test_removed_hooks_leave_logits_bit_identical(model, tokens, pcp):
    before = model(tokens)
    with model.hooks(fwd_hooks=pcp.hooks(model)):
        edited = model(tokens)
    after = model(tokens)
    assert torch.equal(before, after)
    assert not torch.allclose(before, edited)
    assert _tl.attached_hook_count(model) == 0


def test_hooks_work_in_run_with_hooks_run_with_cache_and_generate(model, tokens, pcp):
    hooks = pcp.hooks(model)
    with model.hooks(fwd_hooks=hooks):
        ctx = model(tokens)
        cached, cache = model.run_with_cache(tokens)
    rwh = model.run_with_hooks(tokens, fwd_hooks=hooks)
    assert torch.equal(ctx, rwh) and torch.equal(ctx, cached)
    assert "blocks.2.hook_mlp_out" in cache.cache_dict
    # generate without a KV cache equals greedy decoding by full forwards with the hooks
    prompt = tokens[:3, :4]
    greedy = dict(do_sample=False, verbose=False, stop_at_eos=False)
    with model.hooks(fwd_hooks=hooks):
        gen = model.generate(prompt, max_new_tokens=4, use_past_kv_cache=False, **greedy)
        seq = prompt
        for _ in range(4):
            nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(gen, seq)
    assert not torch.equal(gen, model.generate(prompt, 4, use_past_kv_cache=False, **greedy))
    # with the KV cache (one new position per step) every step's output is x·M of its own input
    ln, steps = model.blocks[2].ln2, []

    def check(act, hook):
        x = state.pop("x") * ln.w + ln.b
        assert torch.allclose(act, pcp.part("mlp2").apply(x), atol=1e-6)
        steps.append(act.shape[1])

    state: dict[str, torch.Tensor] = {}
    spy = [
        ("blocks.2.ln2.hook_normalized", lambda a, hook: state.update(x=a)),
        ("blocks.2.hook_mlp_out", check),
    ]
    with model.hooks(fwd_hooks=hooks + spy):
        model.generate(prompt, max_new_tokens=4, use_past_kv_cache=True, **greedy)
    assert steps == [4, 1, 1, 1]


def test_capture_fires_before_output_in_every_block(model, tokens):
    order: list[str] = []
    names = [
        f"blocks.{layer}.{h}"
        for layer in range(3)
        for h in ("ln1.hook_normalized", "hook_attn_out", "ln2.hook_normalized", "hook_mlp_out")
    ]
    model.run_with_hooks(
        tokens[:1], fwd_hooks=[(n, lambda a, hook: order.append(hook.name)) for n in names]
    )
    for layer in range(3):
        seen = [n for n in order if n.startswith(f"blocks.{layer}.")]
        assert seen.index(f"blocks.{layer}.ln1.hook_normalized") < seen.index(
            f"blocks.{layer}.hook_attn_out"
        )
        assert max(i for i, n in enumerate(seen) if "ln2" in n) < seen.index(
            f"blocks.{layer}.hook_mlp_out"
        )


def test_composes_with_mean_ablation_and_capture_hooks(model, tokens):
    pcp = fit_pcp(model, tokens, "mlp0", 2, progress=False)
    mean = torch.randn(D, generator=torch.Generator().manual_seed(5))
    seen: dict[str, torch.Tensor] = {}

    def mean_ablate(act, hook):
        return mean.expand_as(act).clone()

    def capture(act, hook):
        seen[hook.name] = act.detach().clone()

    user = [("blocks.2.hook_attn_out", mean_ablate), ("blocks.1.hook_resid_post", capture)]
    with model.hooks(fwd_hooks=pcp.hooks(model) + user):
        logits, cache = model.run_with_cache(tokens)
    x0 = module_inputs(model, tokens, 0)
    assert torch.allclose(cache["blocks.0.hook_mlp_out"], pcp.part("mlp0").apply(x0), atol=1e-6)
    assert torch.equal(cache["blocks.2.hook_attn_out"], mean.expand_as(x0))
    assert torch.equal(seen["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_post"])
    # order of the lists does not matter across different hook points
    assert torch.equal(model.run_with_hooks(tokens, fwd_hooks=user + pcp.hooks(model)), logits)


def test_output_hook_without_capture_raises(model, tokens, pcp, hygiene):
    snap = hygiene.snapshot(model)
    out_only = [h for h in pcp.hooks(model) if "hook_normalized" not in h[0]]
    with pytest.raises(RuntimeError, match="found no module input"):
        model.run_with_hooks(tokens, fwd_hooks=out_only)
    hygiene.check(model, snap)


def test_follows_model_dtype():
    m = tiny_model(n_layers=2, dtype=torch.float64, seed=3)
    toks = torch.randint(0, 50, (8, 4))
    pcp = fit_pcp(m, toks, "mlp1", 2, progress=False)
    with m.hooks(fwd_hooks=pcp.hooks(m)):
        _, cache = m.run_with_cache(toks, names_filter="blocks.1.hook_mlp_out")
    assert cache["blocks.1.hook_mlp_out"].dtype == torch.float64


# ------------------------------------------------------------------------------------------------
# edits and immutability
# ------------------------------------------------------------------------------------------------


def test_edits_return_new_values(model, pcp):
    a0 = pcp.part("mlp0").scales.clone()
    rel = pcp.scale("mlp0", [-1.2, 0.5])
    assert torch.allclose(rel.part("mlp0").scales, a0 * torch.tensor([-1.2, 0.5]).double())
    ab = pcp.scale("mlp0", 0.25, relative=False, components=1)
    assert ab.part("mlp0").scales.tolist() == [a0[0].item(), 0.25]
    fl = pcp.flip("mlp0", [0, 1])
    assert torch.equal(fl.part("mlp0").scales, -a0)
    ws = pcp.with_scales({"attn1": [1.0, 2.0]})
    assert ws.part("attn1").scales.tolist() == [1.0, 2.0]
    wb = pcp.with_bias("mlp2", torch.ones(D))
    assert wb.part("mlp2").bias is not None and pcp.part("mlp2").bias is None
    assert torch.equal(pcp.part("mlp0").scales, a0)  # original untouched
    assert torch.equal(rel.part("attn1").directions, pcp.part("attn1").directions)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pcp.parts = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pcp.part("mlp0").scales = a0  # type: ignore[misc]
    assert "mlp0" in pcp and "mlp1" not in pcp and len(pcp) == 3


def test_bias_is_added(model, tokens):
    base = PCPReplacement.from_parts(model, [SitePCP("mlp1", orthonormal(2, D, 0), [1.0, -1.0])])
    b = torch.linspace(-1, 1, D, dtype=torch.float64)
    with_b = base.with_bias("mlp1", b)
    outs = []
    for rep in (base, with_b):
        with model.hooks(fwd_hooks=rep.hooks(model)):
            _, c = model.run_with_cache(tokens, names_filter="blocks.1.hook_mlp_out")
        outs.append(c["blocks.1.hook_mlp_out"])
    assert torch.allclose(outs[1] - outs[0], b.float().expand_as(outs[0]), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# least squares
# ------------------------------------------------------------------------------------------------


def _plant(model, layer, u, alpha, bias=None):
    """A user hook pair that turns MLP ``layer`` into x ↦ x·M (+ b), M = Uᵀ diag(α) U."""
    m = (u.T * torch.as_tensor(alpha, dtype=torch.float64)) @ u
    state = {}
    ln = model.blocks[layer].ln2

    def grab(act, hook):
        state["x"] = act * ln.w + ln.b

    def put(act, hook):
        y = state.pop("x").double() @ m
        if bias is not None:
            y = y + bias
        return y.to(act.dtype)

    return [(f"blocks.{layer}.ln2.hook_normalized", grab), (f"blocks.{layer}.hook_mlp_out", put)]


def test_least_squares_recovers_planted_symmetric_low_rank_module(model, tokens, hygiene):
    snap = hygiene.snapshot(model)
    u = orthonormal(3, D, 7)
    alpha = [1.7, -0.4, 0.9]
    guess = PCPReplacement.from_parts(model, [SitePCP("mlp1", u, [1.0, 1.0, 1.0])])
    with model.hooks(fwd_hooks=_plant(model, 1, u, alpha)):
        got = least_squares_scales(model, guess, tokens, progress=False)
    assert got.part("mlp1").scales.tolist() == pytest.approx(alpha, abs=1e-4)
    # with a bias
    b = torch.linspace(-0.5, 0.5, D, dtype=torch.float64)
    with model.hooks(fwd_hooks=_plant(model, 1, u, alpha, b)):
        got = least_squares_scales(model, guess, tokens, bias=True, progress=False)
    assert got.part("mlp1").scales.tolist() == pytest.approx(alpha, abs=1e-4)
    assert torch.allclose(got.part("mlp1").bias, b, atol=1e-4)
    hygiene.check(model, snap)


def test_fit_pcp_end_to_end_recovers_planted_rank_one_module(model, tokens):
    u = orthonormal(1, D, 11)
    with model.hooks(fwd_hooks=_plant(model, 2, u, [-0.8])):
        pcp = fit_pcp(model, tokens, "mlp2", 1, progress=False)
        p = pcp.part("mlp2")
        assert abs(float(p.directions[0] @ u[0])) == pytest.approx(1.0, abs=1e-6)
        assert p.scales.tolist() == pytest.approx([-0.8], abs=1e-4)
        assert p.explained_variance_ratio.tolist() == pytest.approx([1.0], abs=1e-6)


@pytest.mark.parametrize("directions", ["principal", "reference_code"])
def test_least_squares_matches_explicit_lstsq(model, tokens, directions):
    pcp = fit_pcp(
        model, tokens, "mlp0", 3, directions=directions, positions=[2, -1], progress=False
    )
    x = module_inputs(model, tokens, 0)[:, [2, -1]].reshape(-1, D).double()
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_mlp_out")
    y = cache["blocks.0.hook_mlp_out"][:, [2, -1]].reshape(-1, D).double()
    u = pcp.part("mlp0").directions
    design = torch.stack([(x @ u[c])[:, None] * u[c] for c in range(3)], -1).reshape(-1, 3)
    want = torch.linalg.lstsq(design, y.reshape(-1, 1)).solution[:, 0]
    assert torch.allclose(pcp.part("mlp0").scales, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_regression_form_matches_explicit_lstsq_per_component(model, tokens, bias):
    pcp = fit_pcp(
        model, tokens, "attn1", 3, positions=[2, -1], form="regression", bias=bias, progress=False
    )
    p = pcp.part("attn1")
    x = module_inputs(model, tokens, 1, "attn")[:, [2, -1]].reshape(-1, D).double().detach()
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_attn_out")
    y = cache["blocks.1.hook_attn_out"][:, [2, -1]].reshape(-1, D).double().detach()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) if bias else x
    # one regression per column. x lies on a hyperplane (LayerNorm centring) up to float32
    # rounding: with the ones column the design is singular, so drop that rounding direction
    coef = torch.linalg.pinv(design, rtol=1e-6) @ (y @ p.directions.T)
    assert p.form == "regression" and p.scales.tolist() == [1.0, 1.0, 1.0]
    # and compare fitted values, not vectors (many read vectors give the same values on x)
    fitted = x @ p.reads.T + (0 if p.bias is None else p.bias @ p.directions.T)
    assert torch.allclose(fitted, design @ coef, atol=1e-6)
    # the symmetric form is the same map only where every read vector is its direction
    sym = fit_pcp(model, tokens, "attn1", 3, positions=[2, -1], progress=False).part("attn1")
    err = {f: float(((x @ q.matrix() - y) ** 2).mean()) for f, q in [("reg", p), ("sym", sym)]}
    assert err["reg"] < err["sym"]


def test_regression_hooks_apply_the_asymmetric_map_and_refit_a_planted_one(model, tokens, hygiene):
    snap = hygiene.snapshot(model)
    u, reads = orthonormal(2, D, 5), torch.randn(2, D, generator=torch.Generator().manual_seed(6))
    planted = PCPReplacement.from_parts(
        model, [SitePCP("mlp1", u, [1.5, -0.5], reads=reads.double())]
    )
    m = planted.matrix("mlp1")
    assert not torch.allclose(m, m.T)  # read one direction, write another
    with model.hooks(fwd_hooks=planted.hooks(model)):
        _, cache = model.run_with_cache(tokens, names_filter="blocks.1.hook_mlp_out")
        got = fit_pcp(model, tokens, "mlp1", 2, form="regression", progress=False).part("mlp1")
        refit = least_squares_scales(
            model, PCPReplacement.from_parts(model, [got]), tokens, progress=False
        )
    x = module_inputs(model, tokens, 1).double()
    assert torch.allclose(cache["blocks.1.hook_mlp_out"].double(), x @ m, atol=1e-5)
    # the refit finds the planted map (its directions up to sign), with alpha = 1
    assert torch.allclose(x @ got.matrix(), x @ m, atol=1e-4)
    # least squares on the fitted read vectors keeps alpha at the optimum, 1
    assert refit.part("mlp1").scales.tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    hygiene.check(model, snap)


# ------------------------------------------------------------------------------------------------
# bad input: clear ValueErrors, and the model is left exactly as it was
# ------------------------------------------------------------------------------------------------


BAD_FITS = [
    (dict(rank=0), "rank must be an int in 1..16"),
    (dict(rank=17), "rank must be an int in 1..16"),
    (dict(rank=True), "rank must be an int"),
    (dict(rank={"mlp1": 2}), "missing \\['mlp0'\\]"),
    (dict(rank=5, positions=[1], n=3), "rank must be an int in 1..2 .*n_samples - 1=2"),
    (dict(rank=1, positions=[0], n=1), "PCA needs at least 2 activation vectors"),
    (dict(sites="resid_pre1"), "PCP replaces whole attention or MLP modules; got 'resid_pre1'"),
    (dict(sites="attn1.h2"), "got 'attn1.h2'"),
    (dict(sites="embed"), "got 'embed'"),
    (dict(sites="mlp7"), "layer out of range: 7"),
    (dict(sites=[]), "need at least one"),
    (dict(directions="pca"), "directions must be 'principal'"),
    (dict(scales="random"), "scales must be 'least_squares' or 'ones'"),
    (dict(scales="ones", bias=True), "bias=True is fitted by least squares"),
    (dict(method="svd"), "method must be 'streaming' or 'sklearn'"),
    (dict(form="asymmetric"), "form must be 'symmetric' .* or 'regression'"),
    (dict(positions=[9]), "position out of range: 9"),
]


@pytest.mark.parametrize(("kw", "match"), BAD_FITS)
def test_bad_fit_arguments(model, tokens, hygiene, kw, match):
    snap = hygiene.snapshot(model)
    kw = dict(kw)
    n = kw.pop("n", None)
    args = dict(sites="mlp0", rank=2, progress=False) | kw
    toks = tokens if n is None else tokens[:n]
    with pytest.raises(ValueError, match=match):
        fit_pcp(model, toks, **args)
    hygiene.check(model, snap)


def test_non_finite_activations(tokens):
    m = tiny_model(n_layers=2, seed=4)
    with torch.no_grad():
        m.blocks[0].mlp.W_out[0, 0] = float("nan")
    snap = {k: v.clone() for k, v in m.state_dict().items()}
    for method in ("streaming", "sklearn"):
        with pytest.raises(ValueError, match="non-finite"):
            fit_pcp(m, tokens, "mlp0", 2, method=method, progress=False)
    assert _tl.attached_hook_count(m) == 0
    assert all(
        torch.allclose(v, snap[k], rtol=0, atol=0, equal_nan=True)
        for k, v in m.state_dict().items()
    )


def test_applying_to_an_incompatible_model_is_refused(pcp, model_lnpre, hygiene):
    wide = tiny_model(n_layers=3, d_model=32, seed=0)
    for other, match in [
        (wide, "d_model=16.*d_model=32"),
        (model_lnpre, "fold_ln=False.*fold_ln=True"),
    ]:
        snap = hygiene.snapshot(other)
        with pytest.raises(ValueError, match=match):
            pcp.hooks(other)
        with pytest.raises(ValueError, match="model: this PCP replacement was fitted"):
            least_squares_scales(other, pcp, torch.zeros(2, 3, dtype=torch.long), progress=False)
        hygiene.check(other, snap)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: p.with_scales({"mlp0": [1.0, 2.0, 3.0]}), "must have length 2 \\(the rank\\)"),
        (lambda p: p.with_scales({"mlp0": [1.0, float("inf")]}), "must be finite"),
        (lambda p: p.with_scales([1.0]), "scales must be a mapping"),
        (lambda p: p.scale("mlp0", [1.0, 2.0, 3.0]), "factors must be one number or one per"),
        (lambda p: p.scale("mlp0", 2.0, components=[2]), "components must be ints in 0..1"),
        (lambda p: p.flip("mlp0", [5]), "components must be ints in 0..1"),
        (lambda p: p.flip("mlp1", 0), "site 'mlp1' is not replaced"),
        (lambda p: p.with_bias("mlp0", [1.0, 2.0]), "bias of site 'mlp0' must have length 16"),
        (lambda p: p.part("resid_mid0"), "PCP replaces whole attention or MLP modules"),
        (lambda p: SitePCP("mlp0", torch.ones(2, 16), [1, 1]), "must be unit vectors"),
        (lambda p: SitePCP("mlp0", torch.eye(16)[:2], [1, 1], kind="x"), "kind must be one of"),
        (lambda p: SitePCP("mlp0", torch.eye(16)[:2], [1]), "must have length 2"),
        (
            lambda p: SitePCP("mlp0", torch.eye(16)[:2], [1, 1], reads=torch.ones(3, 16)),
            "reads of site 'mlp0' must have the directions' shape \\[2, 16\\], got \\[3, 16\\]",
        ),
        (lambda p: PCPReplacement((), p.fingerprint), "at least one site"),
        (
            lambda p: PCPReplacement(p.parts, dict(p.fingerprint) | {"d_model": 8}),
            "have width 16 but the model has d_model=8",
        ),
    ],
)
def test_bad_edits_and_values(model, pcp, hygiene, call, match):
    snap = hygiene.snapshot(model)
    with pytest.raises(ValueError, match=match):
        call(pcp)
    hygiene.check(model, snap)


def test_bad_least_squares_inputs(model, pcp, tokens, hygiene):
    snap = hygiene.snapshot(model)
    with pytest.raises(ValueError, match="least squares needs at least 2"):
        least_squares_scales(model, pcp, tokens[:1], positions=[0], bias=True, progress=False)
    with pytest.raises(ValueError, match="site 'mlp1' is not replaced"):
        least_squares_scales(model, pcp, tokens, sites="mlp1", progress=False)
    hygiene.check(model, snap)
