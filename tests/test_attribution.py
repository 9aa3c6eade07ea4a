"""Attribution patching: exact where theory says so, first-order elsewhere, and hygiene."""

from __future__ import annotations

import math
import re

import pytest
import torch

from pcp_lens import _tl
from pcp_lens.attribution import attribution_patching
from pcp_lens.groups import PositionMetric
from pcp_lens.patching import causal_patching, patching_grid
from pcp_lens.sites import all_sites
from pcp_lens.testing import fixed_value_model, tiny_model

V = 40


def logit_diff(lg):
    return (lg[:, -1, 3] - lg[:, -1, 5]).mean()


def tokens(b=3, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (b, n), generator=g), torch.randint(0, V, (b, n), generator=g)


def both(model, clean, corrupted, metric, sites, method, positions="each", **kw):
    """(estimates, exact effects) for the same units, as float64 tensors."""
    est = attribution_patching(
        model, clean, corrupted, metric, sites=sites, positions=positions, method=method,
        progress=False, **kw,
    )
    ref = causal_patching(
        model, clean, corrupted, metric, sites=sites, positions=positions, progress=False
    )
    assert est[["site", "position"]].equals(ref[["site", "position"]])
    return (
        torch.tensor(est["estimate"].to_numpy(dtype=float)),
        torch.tensor(ref["effect"].to_numpy(dtype=float)),
    )


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=3, d_model=16, n_heads=4, d_vocab=V, seed=5)


@pytest.mark.parametrize("method", ["atp", "atp*", "relp"])
def test_exact_through_a_linear_path(method):
    """No LayerNorm, last layer's mlp/resid_post, metric linear in logits: nothing to linearise."""
    m = tiny_model(n_layers=2, d_vocab=V, normalization_type=None, dtype=torch.float64, seed=1)
    clean, corrupted = tokens()
    every = PositionMetric(lambda lg: lg[:, 0, 2] - 2 * lg[:, 1, 7], positions=(1, -1))
    largest = 0.0
    for metric in (logit_diff, every, lambda lg: lg[:, :, 4].mean(1)):
        for positions in ("each", "all", [0, 4]):
            est, exact = both(
                m, clean, corrupted, metric, ["mlp1", "resid_post1"], method, positions
            )
            torch.testing.assert_close(est, exact, atol=1e-10, rtol=0)
            largest = max(largest, float(exact.abs().max()))
    assert largest > 0.1


def test_qk_fix_is_exact_when_only_the_next_pattern_is_nonlinear():
    """A patch whose effect goes through one attention pattern (and linear paths) only: atp* is
    exact, atp is not."""
    m = fixed_value_model()
    clean, corrupted = tokens(n=7)
    sites = ["resid_pre1", "attn0", "attn0.h1", "attn0.h3"]
    star, exact = both(m, clean, corrupted, logit_diff, sites, "atp*")
    plain, _ = both(m, clean, corrupted, logit_diff, sites, "atp")
    assert exact.abs().max() > 0.1
    torch.testing.assert_close(star, exact, atol=1e-9, rtol=0)
    assert (plain - exact).abs().max() > 0.05 * exact.abs().max()


@pytest.mark.parametrize("method", ["atp", "atp*"])
def test_first_order_agreement_for_small_differences(model, method):
    """Clean and corrupted embeddings eps apart: estimate - exact is O(eps^2)."""
    m = tiny_model(n_layers=3, d_vocab=V, dtype=torch.float64, seed=2)
    clean, corrupted = tokens()
    base = torch.randn(16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sites = all_sites(m, heads=True)
    errs = []
    for eps in (1e-2, 1e-3):
        shrink = [("hook_embed", lambda act, hook, eps=eps: base + eps * act)]
        with m.hooks(fwd_hooks=shrink):
            est, exact = both(m, clean, corrupted, logit_diff, sites, method)
        errs.append(float((est - exact).abs().max() / exact.abs().max()))
    assert errs[1] < 0.02
    assert errs[1] < errs[0] / 5  # the relative error shrinks with eps


def test_heads_add_up_to_their_layer(model):
    clean, corrupted = tokens()
    df = attribution_patching(model, clean, corrupted, logit_diff, progress=False)
    for layer in range(3):
        whole = df[(df["site"] == f"attn{layer}")]["estimate"].to_numpy()
        heads = df[(df["layer"] == layer) & df["head"].notna()]
        per_pos = heads.groupby("position")["estimate"].sum().to_numpy()
        assert per_pos == pytest.approx(whole, abs=1e-5)


def test_per_pair_estimates_are_each_pairs_own(model):
    clean, corrupted = tokens(b=4)
    per_prompt = lambda lg: lg[:, -1, 3] - lg[:, -1, 5]  # noqa: E731
    for method in ("atp", "atp*", "relp"):
        df = attribution_patching(
            model, clean, corrupted, logit_diff, method=method, per_pair=True, progress=False
        )
        again = attribution_patching(
            model, clean, corrupted, per_prompt, method=method, per_pair=True, progress=False
        )
        pairs = torch.tensor(df["pairs"].tolist(), dtype=torch.float64)
        assert pairs.shape == (len(df), 4)
        torch.testing.assert_close(pairs, torch.tensor(again["pairs"].tolist(), dtype=pairs.dtype))
        torch.testing.assert_close(torch.tensor(df["estimate"].to_numpy()), pairs.mean(1))
        se = pairs.std(1) / 2
        torch.testing.assert_close(torch.tensor(df["se"].to_numpy()), se)
        small = attribution_patching(
            model, clean, corrupted, logit_diff, method=method, per_pair=True,
            max_batch_tokens=13, progress=False,  # two pairs per gradient pass
        )
        torch.testing.assert_close(
            torch.tensor(small["pairs"].tolist(), dtype=pairs.dtype), pairs, atol=1e-6, rtol=0
        )
        assert small["baseline"].iloc[0] == pytest.approx(df["baseline"].iloc[0], abs=1e-6)
        for i in (0, 3):
            alone = attribution_patching(
                model, clean[i : i + 1], corrupted[i : i + 1], logit_diff, method=method,
                progress=False,
            )
            assert alone["estimate"].tolist() == pytest.approx(pairs[:, i].tolist(), abs=1e-5)
            assert alone["se"].isna().all()


def test_verify_matches_causal_patching(model):
    clean, corrupted = tokens()
    df = attribution_patching(model, clean, corrupted, logit_diff, verify=7, progress=False)
    done = df[df["value"].notna()]
    assert len(done) == 7
    assert df["effect"].notna().sum() == 7
    top = df["estimate"].abs().sort_values(ascending=False).index[:7]
    assert sorted(done.index) == sorted(top)
    ref = causal_patching(model, clean, corrupted, logit_diff, sites=list(df["site"].unique()),
                          progress=False)
    ref = ref.set_index(["site", "position"])
    for r in done.itertuples():
        exact = ref.loc[(r.site, r.position)]
        assert r.value == pytest.approx(exact["value"], abs=1e-6)
        assert r.effect == pytest.approx(exact["effect"], abs=1e-6)
        assert r.baseline == pytest.approx(exact["baseline"], abs=1e-7)
    # the table reads like causal_patching's
    grid = patching_grid(df, "mlp", column="estimate")
    assert grid.shape == (3, 6)


def test_graddrop_on_the_last_layer_is_the_plain_magnitude(model):
    """Every drop layer is upstream of (or is) the last layer: each term is |plain estimate|."""
    clean, corrupted = tokens()
    kw = dict(sites=["mlp2", "attn2", "mlp0"], method="atp*", per_pair=True, progress=False)
    gd = attribution_patching(model, clean, corrupted, logit_diff, graddrop=True, **kw)
    plain = attribution_patching(model, clean, corrupted, logit_diff, **kw)
    last = (gd["layer"] == 2).to_numpy()
    expect = torch.tensor(plain["pairs"].tolist(), dtype=torch.float64).abs().mean(1) * 3 / 2
    got = torch.tensor(gd["estimate"].to_numpy())
    torch.testing.assert_close(got[last], expect[last])
    assert (got >= 0).all()
    assert not torch.allclose(got[~last], expect[~last])


def _snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(m, before):
    return all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_hygiene_and_determinism():
    m = tiny_model(n_layers=2, d_vocab=V, seed=4)
    m.blocks[0].mlp.W_in.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    before = _snapshot(m)
    clean, corrupted = tokens()
    for method in ("atp", "atp*", "relp"):
        a = attribution_patching(m, clean, corrupted, logit_diff, method=method, progress=False)
        b = attribution_patching(m, clean, corrupted, logit_diff, method=method, progress=False)
        assert a["estimate"].tolist() == b["estimate"].tolist()
    for p in m.parameters():
        p.requires_grad_(False)
    frozen = attribution_patching(m, clean, corrupted, logit_diff, progress=False)
    for n, p in m.named_parameters():
        p.requires_grad_(flags[n])
    again = attribution_patching(m, clean, corrupted, logit_diff, progress=False)
    assert frozen["estimate"].tolist() == pytest.approx(again["estimate"].tolist(), abs=1e-6)
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    assert all(p.grad is None for p in m.parameters())
    assert _tl.attached_hook_count(m) == 0
    assert _same(m, before)
    with torch.no_grad():  # a caller's no_grad does not stop the backward
        inside = attribution_patching(m, clean, corrupted, logit_diff, progress=False)
    assert inside["estimate"].tolist() == again["estimate"].tolist()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="atp2"), "method must be one of ['atp', 'atp*', 'relp'], got 'atp2'"),
        (dict(verify=-1), "verify must be an int >= 0 (units to patch exactly), got -1"),
        (dict(verify=True), "verify must be an int >= 0"),
        (dict(graddrop=True), "graddrop=True needs method='atp*', got method='atp'"),
        (dict(per_pair="yes"), "per_pair must be True or False, got 'yes'"),
        (dict(sites=["embed"]), "cannot patch site 'embed'"),
        (dict(sites=["mlp7"]), "layer out of range: 7"),
        (dict(positions=[9]), "position out of range at clean and corrupted: 9"),
        (dict(corrupted=torch.zeros(3, 5, dtype=torch.long)), "same shape"),
        (dict(metric="neg"), "metric must be a callable logits"),
        (dict(metric=lambda lg: lg.argmax(-1).float().mean()), "metric must be differentiable"),
        (dict(metric=lambda lg: lg[0, -1, :2]), "metric must return a scalar"),
        (dict(max_batch_tokens=0), "max_batch_tokens must be an int >= 1, got 0"),
    ],
)
def test_bad_input(model, kwargs, match):
    clean, corrupted = tokens()
    args = dict(clean=clean, corrupted=corrupted, metric=logit_diff, progress=False)
    args.update(kwargs)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=re.escape(match)):
        attribution_patching(model, **args)
    assert _tl.attached_hook_count(model) == 0
    assert _same(model, before)
    assert all(p.grad is None for p in model.parameters())


def test_metric_error_leaves_nothing_behind(model):
    def broken(lg):
        raise RuntimeError("metric failed")

    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="metric failed"):
        attribution_patching(model, *tokens(), broken, method="atp*", progress=False)
    assert _tl.attached_hook_count(model) == 0
    assert _same(model, before)


def test_relp_refuses_gated_mlps():
    cfg = _tl.HookedTransformerConfig(
        n_layers=1, d_model=8, n_ctx=8, d_head=2, n_heads=4, d_vocab=V, d_mlp=16,
        act_fn="silu", gated_mlp=True, normalization_type="RMS",
    )
    m = _tl.new_model(cfg)
    with pytest.raises(ValueError, match=re.escape("method='relp' holds each MLP activation")):
        attribution_patching(m, *tokens(), logit_diff, method="relp", progress=False)


def test_se_is_nan_for_one_pair(model):
    clean, corrupted = tokens(b=1)
    df = attribution_patching(model, clean, corrupted, logit_diff, sites=["mlp0"], progress=False)
    assert df["se"].isna().all() and not math.isnan(df["estimate"].iloc[0])


def test_plot_patching_draws_the_estimates(model):
    from pcp_lens.plots import plot_patching

    df = attribution_patching(model, *tokens(), logit_diff, verify=2, progress=False)
    fig = plot_patching(df, "estimate")
    titles = [ax.get_title() for ax in fig.axes if ax.get_label() == "panel"]
    assert titles == [f"{k}, clean → corrupted" for k in ("attn", "heads", "mlp")]
    with pytest.raises(ValueError, match=re.escape("value must be one of ['effect', 'value'")):
        plot_patching(df.drop(columns="estimate"), "estimate")
