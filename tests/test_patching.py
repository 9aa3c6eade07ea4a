"""Batched causal patching: equivalence with TransformerLens and with a naive per-site loop."""

from __future__ import annotations

import re
import warnings

import pandas as pd
import pytest
import torch

from pcp_lens import _tl
from pcp_lens.groups import GroupMetric, PositionMetric, TokenGroups
from pcp_lens.patching import causal_patching, patching_grid
from pcp_lens.sites import Site
from pcp_lens.testing import tiny_model

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from transformer_lens import patching as tlp

V = 60


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=4, d_model=32, n_heads=4, d_vocab=V, seed=3)


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, V, (3, 7), generator=g), torch.randint(0, V, (3, 7), generator=g)


def logit_diff(lg):
    return (lg[:, -1, 3] - lg[:, -1, 5]).mean()


def naive(model, source, target, metric, site: Site, pos: slice):
    """One full forward per site, patching with a hook: the definition of causal patching."""
    _, cache = model.run_with_cache(source)
    src = cache[site.hook_name]

    def hook(act, hook):
        act = act.clone()
        if site.head is None:
            act[:, pos] = src[:, pos]
        else:
            act[:, pos, site.head] = src[:, pos, site.head]
        return act

    with torch.no_grad():
        return float(metric(model.run_with_hooks(target, fwd_hooks=[(site.hook_name, hook)])))


@pytest.mark.parametrize(
    "kind,fn",
    [
        ("mlp", "get_act_patch_mlp_out"),
        ("attn", "get_act_patch_attn_out"),
        ("resid_pre", "get_act_patch_resid_pre"),
        ("resid_mid", "get_act_patch_resid_mid"),
    ],
)
def test_matches_transformer_lens(model, pair, kind, fn):
    clean, corrupted = pair
    _, clean_cache = model.run_with_cache(clean)
    ref = getattr(tlp, fn)(model, corrupted, clean_cache, logit_diff)
    sites = [Site(layer, kind) for layer in range(4)]
    df = causal_patching(model, clean, corrupted, logit_diff, sites=sites, progress=False)
    assert (ref - patching_grid(df, kind)).abs().max() <= 1e-5


def test_heads_match_transformer_lens(model, pair):
    clean, corrupted = pair
    _, clean_cache = model.run_with_cache(clean)
    ref = tlp.get_act_patch_attn_head_out_by_pos(model, corrupted, clean_cache, logit_diff)
    sites = [Site(layer, "attn", h) for layer in range(4) for h in range(4)]
    df = causal_patching(model, clean, corrupted, logit_diff, sites=sites, progress=False)
    ours = torch.zeros_like(ref)
    for r in df.itertuples():
        ours[r.layer, r.position, r.head] = r.value
    assert (ref - ours).abs().max() <= 1e-5


def test_all_positions_and_resid_post_match_naive(model, pair):
    clean, corrupted = pair
    sites = [
        Site(1, "attn"),
        Site(2, "mlp"),
        Site(0, "resid_post"),
        Site(3, "resid_pre"),
        Site(1, "attn", 2),
    ]
    df = causal_patching(
        model, clean, corrupted, logit_diff, sites=sites, positions="all", progress=False
    )
    assert (df["position"] == -1).all()
    for s, v in zip(sites, df["value"], strict=True):
        assert v == pytest.approx(
            naive(model, clean, corrupted, logit_diff, s, slice(None)), abs=1e-5
        )
    df = causal_patching(
        model,
        clean,
        corrupted,
        logit_diff,
        sites=[Site(0, "resid_post")],
        positions=[2, -1],
        progress=False,
    )
    assert df["position"].tolist() == [2, 6]
    for p, v in zip([2, 6], df["value"], strict=True):
        ref = naive(model, clean, corrupted, logit_diff, Site(0, "resid_post"), slice(p, p + 1))
        assert v == pytest.approx(ref, abs=1e-5)


def test_sparse_metric_and_chunking_give_same_numbers(model, pair):
    clean, corrupted = pair
    dense = causal_patching(model, clean, corrupted, logit_diff, progress=False)
    sparse = PositionMetric(logit_diff, positions=(-1,))
    for budget in (7, 50, 10**6):
        df = causal_patching(
            model, clean, corrupted, sparse, max_batch_tokens=budget, progress=False
        )
        assert torch.allclose(
            torch.tensor(df["value"].to_numpy()),
            torch.tensor(dense["value"].to_numpy()),
            atol=1e-6,
        )


def test_metric_reading_early_positions(model, pair):
    """A metric at position 2 must be unaffected by patches after it, exactly."""
    clean, corrupted = pair
    m = PositionMetric(lambda lg: lg[:, 0, 7].mean() + lg[:, 1, 9].mean(), positions=(2, 4))
    df = causal_patching(model, clean, corrupted, m, progress=False)
    late = df[df["position"] > 4]
    assert (late["effect"].abs() == 0).all()
    for r in df[df["position"] <= 4].itertuples():
        ref = naive(
            model, clean, corrupted, m, Site(r.layer, r.kind), slice(r.position, r.position + 1)
        )
        assert r.value == pytest.approx(ref, abs=1e-5)


def test_group_metric_and_both_directions(model, pair):
    clean, corrupted = pair
    groups = TokenGroups({"neg": list(range(0, 20)), "pos": list(range(20, 40))}, d_vocab=V)
    metric = GroupMetric(groups, "neg", k=10)
    df = causal_patching(model, clean, corrupted, metric, direction="both", progress=False)
    fwd = df[df["direction"] == "clean_to_corrupted"]
    back = df[df["direction"] == "corrupted_to_clean"]
    assert len(fwd) == len(back) == 8 * 7
    assert fwd["baseline"].iloc[0] == pytest.approx(float(metric(model(corrupted))))
    assert back["baseline"].iloc[0] == pytest.approx(float(metric(model(clean))))
    rev = causal_patching(model, corrupted, clean, metric, progress=False)
    assert rev["value"].tolist() == pytest.approx(back["value"].tolist(), abs=1e-6)
    # patching the last layer's resid_post at every position reproduces the source run
    full = causal_patching(
        model, clean, corrupted, metric, sites=["resid_post3"], positions="all", progress=False
    )
    assert full["value"].iloc[0] == pytest.approx(float(metric(model(clean))))


def test_composes_with_user_hooks(model, pair):
    clean, corrupted = pair
    zero = (Site(2, "attn").hook_name, lambda act, hook: act * 0)
    with model.hooks(fwd_hooks=[zero]):
        df = causal_patching(
            model, clean, corrupted, logit_diff, sites=["mlp0", "mlp3"], progress=False
        )
        refs = [
            naive(model, clean, corrupted, logit_diff, Site.parse(s), slice(p, p + 1))
            for s in ("mlp0", "mlp3")
            for p in range(7)
        ]
    assert df["value"].tolist() == pytest.approx(refs, abs=1e-5)
    assert _tl.attached_hook_count(model) == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(corrupted=torch.zeros(3, 6, dtype=torch.long)), "same shape"),
        (dict(sites=["mlp9"]), "layer out of range: 9, model has layers 0..3"),
        (dict(sites=["embed"]), "cannot patch site 'embed'"),
        (dict(positions=[7]), "position out of range at clean and corrupted: 7"),
        (dict(positions="some"), "positions must be 'each', 'all'"),
        (dict(direction="sideways"), "direction must be"),
        (dict(max_batch_tokens=0), "max_batch_tokens must be an int >= 1, got 0"),
        (dict(metric=lambda lg: lg[0, -1, :2]), "metric must return a scalar"),
        (dict(clean=torch.full((3, 7), V)), "out of range: \\[60\\]"),
    ],
)
def test_bad_input(model, pair, kwargs, match):
    clean, corrupted = pair
    args = dict(clean=clean, corrupted=corrupted, metric=logit_diff, progress=False)
    args.update(kwargs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        causal_patching(model, **args)
    assert _tl.attached_hook_count(model) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_error_in_metric_leaves_no_hooks(model, pair):
    calls = []

    def flaky(lg):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("metric failed")
        return logit_diff(lg)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="metric failed"):
        causal_patching(model, *pair, flaky, progress=False)
    assert _tl.attached_hook_count(model) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unequal_lengths_refused(model):
    ragged = [torch.tensor([1, 2]), torch.tensor([1, 2, 3])]
    with pytest.raises(ValueError, match="unequal lengths"):
        causal_patching(model, ragged, ragged, logit_diff, progress=False)


def test_metric_with_unsorted_positions(model, pair):
    """Declared positions out of order: each patch still scores the right positions (a bug once)."""
    clean, corrupted = pair
    groups = TokenGroups({"neg": list(range(0, 20))}, d_vocab=V)
    m = GroupMetric(groups, "neg", k=10, positions=(-1, 2))
    df = causal_patching(model, clean, corrupted, m, sites=["mlp1", "attn0"], progress=False)
    for r in df.itertuples():
        ref = naive(
            model, clean, corrupted, m, Site.parse(r.site), slice(r.position, r.position + 1)
        )
        assert r.value == pytest.approx(ref, abs=1e-6), (r.site, r.position)


def test_repeated_positions_are_refused(model, pair):
    clean, corrupted = pair
    with pytest.raises(ValueError, match=re.escape("got [1] more than once in [1, 1]")):
        causal_patching(model, clean, corrupted, logit_diff, positions=[1, 1], progress=False)
    with pytest.raises(ValueError, match=re.escape("name the same position twice")):
        causal_patching(model, clean, corrupted, logit_diff, positions=[6, -1], progress=False)


def test_non_callable_metric_fails_before_any_forward_pass(model, pair):
    clean, corrupted = pair
    calls = []
    counter = [("hook_embed", lambda act, hook: calls.append(1))]
    with (
        model.hooks(fwd_hooks=counter),
        pytest.raises(ValueError, match="metric must be a callable logits"),
    ):
        causal_patching(model, clean, corrupted, "neg", progress=False)  # type: ignore[arg-type]
    assert calls == []


def test_patching_grid_names_what_is_allowed(model, pair):
    clean, corrupted = pair
    df = causal_patching(model, clean, corrupted, logit_diff, ["mlp0", "attn1.h0"], progress=False)
    with pytest.raises(
        ValueError,
        match=re.escape("kind must be one of the table's kinds ['attn', 'mlp'], got 'mlpp'"),
    ):
        patching_grid(df, "mlpp")
    with pytest.raises(ValueError, match=re.escape("column must be one of")):
        patching_grid(df, "mlp", column="valu")
    with pytest.raises(ValueError, match=re.escape("direction must be one of the table's")):
        patching_grid(df, "mlp", direction="backwards")
    with pytest.raises(ValueError, match=re.escape("df must be a causal_patching table with")):
        patching_grid(df.drop(columns="kind"), "mlp")
    heads = df[df["head"].notna()]
    with pytest.raises(ValueError, match="no whole-module rows of kind 'attn'"):
        patching_grid(heads, "attn")


def test_per_pair_effects_equal_patching_each_pair_alone(model, pair):
    clean, corrupted = pair
    sites = ["mlp1", "attn2.h1", "resid_pre2"]
    df = causal_patching(
        model,
        clean,
        corrupted,
        logit_diff,
        sites,
        positions=[2, -1],
        per_pair=True,
        progress=False,
    )
    for row in df.itertuples():
        alone = [
            float(
                causal_patching(
                    model,
                    clean[i : i + 1],
                    corrupted[i : i + 1],
                    logit_diff,
                    row.site,
                    positions=row.position,
                    progress=False,
                )["effect"].iloc[0]
            )
            for i in range(len(clean))
        ]
        assert row.pairs == pytest.approx(alone, abs=1e-5)
        assert sum(row.pairs) / len(row.pairs) == pytest.approx(row.effect, abs=1e-9)
        assert row.se == pytest.approx(float(torch.tensor(alone).std()) / 3**0.5, abs=1e-5)


def test_cross_model_patching_equals_naive_hook(model, pair):
    """source_model: the source activations come from another model of the same shape."""
    other = tiny_model(n_layers=4, d_model=32, n_heads=4, d_vocab=V, seed=9)
    clean, corrupted = pair
    for site in ["mlp0", "attn3", "attn1.h2", "resid_pre1"]:
        df = causal_patching(
            model,
            clean,
            corrupted,
            logit_diff,
            site,
            positions="all",
            source_model=other,
            progress=False,
        )
        s = Site.parse(site)
        _, cache = other.run_with_cache(clean)
        src = cache[s.hook_name]

        def hook(act, hook, s=s, src=src):
            act = act.clone()
            if s.head is None:
                return src.clone()
            act[:, :, s.head] = src[:, :, s.head]
            return act

        with torch.no_grad():
            want = float(
                logit_diff(model.run_with_hooks(corrupted, fwd_hooks=[(s.hook_name, hook)]))
            )
        assert float(df["value"].iloc[0]) == pytest.approx(want, abs=1e-5)


def test_source_model_of_another_shape_is_refused(model, pair, hygiene):
    snap = hygiene.snapshot(model)
    with pytest.raises(ValueError, match=r"source_model must have the model's shape.*n_layers"):
        causal_patching(model, *pair, logit_diff, source_model=tiny_model(n_layers=2, d_vocab=V))
    hygiene.check(model, snap)


def test_read_positions_of_plain_metrics():
    from pcp_lens.patching import read_positions

    lg = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(0))
    assert read_positions(lambda x: x[:, -1, 3] - x[:, 1, 0], lg) == [1, 5]
    assert read_positions(lambda x: x.log_softmax(-1)[:, 2, 0].mean(), lg) == [2]
    assert read_positions(lambda x: x.mean(), lg) == list(range(6))
    assert read_positions(lambda x: torch.tensor(1.0), lg) == []

    def refuses_nan(x):
        if bool(x.isnan().any()):
            raise ValueError("nan")
        return x[:, -1, 0].mean()

    assert read_positions(refuses_nan, lg) is None
    # fmax skips a NaN, so the per-position probe misses position 2; the finite fill catches it
    lg2 = torch.zeros(3, 6, 5)
    lg2[:, 2, 0] = -5.0
    assert read_positions(lambda x: torch.fmax(x[:, 2, 0], x[:, -1, 0]).sum(), lg2) is None


@pytest.mark.parametrize(
    "fn",
    [
        lambda lg: (lg[:, -1, 3] - lg[:, -1, 5]).mean(),
        lambda lg: lg[:, -1, 3],  # per prompt, a view of the logits
        lambda lg: lg[:, 2, 7].mean() - lg.log_softmax(-1)[:, 4, 1].mean(),
    ],
)
def test_plain_metric_reads_only_its_positions_exactly(model, pair, fn):
    """A plain metric gets logits only where it reads them: the same numbers as the naive
    definition, and as the same metric declaring every position (up to float32 rounding)."""
    clean, corrupted = pair
    sites = [Site(1, "attn"), Site(2, "mlp"), Site(0, "resid_pre"), Site(3, "attn", 1)]
    df = causal_patching(model, clean, corrupted, fn, sites=sites, per_pair=True, progress=False)
    for r in df.to_dict("records"):
        s = Site(r["layer"], r["kind"], None if pd.isna(r["head"]) else int(r["head"]))
        p = r["position"]
        ref = naive(model, clean, corrupted, lambda lg: fn(lg).mean(), s, slice(p, p + 1))
        assert r["value"] == pytest.approx(ref, abs=1e-5)
    full = PositionMetric(fn, positions=tuple(range(7)))
    dense = causal_patching(
        model, clean, corrupted, full, sites=sites, per_pair=True, progress=False
    )
    # not bit-identical: unembedding 2 positions instead of 7 is a differently shaped matmul, and
    # on AVX-512 MKL its sums round differently (1.4e-7 seen, float32 eps of logits of a few units);
    # a wrong position is off by more than 1e-3
    assert df["value"].tolist() == pytest.approx(dense["value"].tolist(), abs=1e-6)
    torch.testing.assert_close(
        torch.tensor(df["pairs"].tolist()), torch.tensor(dense["pairs"].tolist()), rtol=0, atol=1e-6
    )


def test_read_columns_of_metrics():
    from pcp_lens.patching import read_columns

    lg = torch.randn(3, 2, 40, generator=torch.Generator().manual_seed(0))
    assert read_columns(lambda x: (x[:, -1, 3] - x[:, 0, 30]).mean(), lg) == [3, 30]
    assert read_columns(lambda x: x[:, -1, 5], lg) == [5]  # per prompt
    # a softmax reads every column; argmax has no gradient; both mean: all columns
    assert read_columns(lambda x: x.log_softmax(-1)[:, -1, 3].mean(), lg) is None
    assert read_columns(lambda x: (x.argmax(-1) == 3).float().mean(), lg) is None
    # the gradient misses a column read only through a comparison: the probe's fills catch it
    assert read_columns(lambda x: x[:, -1, 3].sum() * (x[:, -1, 9] > -100).all(), lg) is None


@pytest.mark.parametrize(
    "metric",
    [
        PositionMetric(lambda lg: (lg[:, 0, 4] - lg[:, 1, 9]).mean(), positions=(2, -1)),
        lambda lg: lg[:, 3, 2] - lg[:, -1, 7],  # plain, per prompt
    ],
)
def test_few_columns_and_trimmed_last_block_equal_the_naive_definition(model, pair, metric):
    """A metric reading a few logits at a few positions is served by unembedding only those
    columns and running the last block only from its first read position: the numbers of the
    definition, for every kind of site, the last block's own included."""
    clean, corrupted = pair
    sites = [Site(0, "resid_pre"), Site(1, "attn", 2), Site(2, "mlp"), Site(3, "attn"),
             Site(3, "mlp"), Site(3, "resid_post")]
    df = causal_patching(model, clean, corrupted, metric, sites=sites, per_pair=True,
                         progress=False)
    assert len(df) == len(sites) * 7
    for r in df.to_dict("records"):
        s = Site(r["layer"], r["kind"], None if pd.isna(r["head"]) else int(r["head"]))
        p = r["position"]

        def mean(lg):
            return torch.as_tensor(metric(lg) if callable(metric) and not isinstance(
                metric, PositionMetric) else metric.score(lg[:, [2, -1]])).mean()

        ref = naive(model, clean, corrupted, mean, s, slice(p, p + 1))
        assert r["value"] == pytest.approx(ref, abs=1e-5)


def test_a_hook_on_the_logits_sees_every_column(model, pair):
    """With a user's hook on the logits, every column is unembedded (the hook may change any):
    its edit is in force and the numbers are the naive definition's under the same hook."""
    clean, corrupted = pair
    widths = set()

    def boost(lg, hook):
        widths.add(lg.shape[-1])
        lg = lg.clone()
        lg[..., 3] += lg[..., 11]  # column 3 now depends on column 11
        return lg

    sites = [Site(1, "mlp"), Site(2, "attn")]
    with model.hooks(fwd_hooks=[(_tl.LOGITS_HOOK, boost)]):
        df = causal_patching(model, clean, corrupted, logit_diff, sites=sites, progress=False)
        for r in df.itertuples():
            pos = slice(r.position, r.position + 1)
            ref = naive(model, clean, corrupted, logit_diff, Site(r.layer, r.kind), pos)
            assert r.value == pytest.approx(ref, abs=1e-5)
    assert widths == {V}
    assert _tl.attached_hook_count(model) == 0


@pytest.mark.parametrize("metric", ["plain", "positioned", "early"])
def test_prefix_rerun_equals_the_kv_path(model, pair, metric, monkeypatch):
    """A model that cannot continue behind cached keys/values (a TL-native bridge) reruns each
    window's prefix instead: the same table, and the naive definition's values."""
    clean, corrupted = pair
    fn = {
        "plain": logit_diff,
        "positioned": PositionMetric(logit_diff, positions=(-1,)),
        "early": PositionMetric(lambda lg: lg[:, 0, 4].mean(), positions=(3,)),
    }[metric]
    sites = [Site(0, "attn"), Site(1, "mlp"), Site(2, "resid_pre"), Site(3, "mlp"),
             Site(3, "resid_post"), Site(1, "attn", 2)]
    kw = dict(sites=sites, positions="each", progress=False, max_batch_tokens=40)
    via_kv = causal_patching(model, clean, corrupted, fn, **kw)
    monkeypatch.setattr(_tl, "resumes_from_kv", lambda m: False)
    rerun = causal_patching(model, clean, corrupted, fn, **kw)
    assert rerun[["site", "position"]].equals(via_kv[["site", "position"]])
    torch.testing.assert_close(
        torch.tensor(rerun["value"].to_numpy(float)),
        torch.tensor(via_kv["value"].to_numpy(float)), atol=1e-5, rtol=0,
    )
    for _, row in rerun.iloc[::5].iterrows():
        s = next(x for x in sites if x.name == row["site"])
        p = int(row["position"])
        ref = naive(model, clean, corrupted, fn, s, slice(p, p + 1))
        assert row["value"] == pytest.approx(ref, abs=1e-5)


def test_parallel_attention_and_mlp_equal_the_naive_definition():
    """Attention and MLP reading the same residual (GPT-J, Pythia) resume like any block; there is
    no residual between them, so ``resid_mid`` is refused by name."""
    cfg = _tl.HookedTransformerConfig(
        n_layers=3, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, d_vocab=V,
        act_fn="gelu_new", normalization_type="LN", parallel_attn_mlp=True, seed=0,
    )
    m = _tl.new_model(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    g = torch.Generator().manual_seed(1)
    clean, corrupted = torch.randint(0, V, (2, 3, 7), generator=g)
    sites = [Site(0, "attn"), Site(1, "mlp"), Site(1, "attn", 3), Site(2, "resid_pre"),
             Site(0, "resid_post")]
    df = causal_patching(m, clean, corrupted, logit_diff, sites=sites, progress=False)
    assert df["effect"].abs().max() > 1e-3
    for row in df.itertuples():
        s = next(x for x in sites if x.name == row.site)
        p = int(row.position)
        ref = naive(m, clean, corrupted, logit_diff, s, slice(p, p + 1))
        assert row.value == pytest.approx(ref, abs=1e-5)
    with pytest.raises(ValueError, match=r"resid_mid1.*parallel_attn_mlp=True"):
        causal_patching(m, clean, corrupted, logit_diff, sites=["resid_mid1"], progress=False)
