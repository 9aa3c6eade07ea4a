"""Tests for pcp_lens.ablation: hooks, means (plain and reference-code), sweep, tables, hygiene."""

from __future__ import annotations

import pytest
import torch

from pcp_lens import _tl
from pcp_lens.ablation import (
    ablation_hooks,
    ablation_means,
    ablation_sweep,
    ablation_table,
    mean_ablation,
    mean_reference_code,
    nested_average,
    resample_ablation,
    resolve_positions,
    zero_ablation,
)
from pcp_lens.groups import GroupMetric, TokenGroups, group_metrics
from pcp_lens.stats import collect_stats
from pcp_lens.testing import tiny_model

D = 16


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=3, seed=1)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 50, (6, 5), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def groups():
    return TokenGroups({"neg": list(range(10)), "pos": list(range(10, 25))}, d_vocab=50)


def capture(name: str, store: dict):
    def fn(act, hook):
        store[name] = act.detach().clone()

    return [(name, fn)]


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_clean(model, before):
    assert _tl.attached_hook_count(model) == 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- hooks ---------------------------------------------------------------------------------------
def test_zero_ablation_positions_and_capture_composition(model, tokens):
    store: dict = {}
    hooks = zero_ablation("mlp1", positions=[1, -1], model=model)
    clean = model(tokens)
    # the user's capture hook runs after ours and sees the ablated tensor
    out = model.run_with_hooks(tokens, fwd_hooks=hooks + capture("blocks.1.hook_mlp_out", store))
    act = store["blocks.1.hook_mlp_out"]
    assert (act[:, [1, 4]] == 0).all()
    assert (act[:, [0, 2, 3]] != 0).all()
    # causality: position 0 precedes every ablated position, so its logits are unchanged
    assert torch.equal(out[:, 0], clean[:, 0])
    assert not torch.allclose(out[:, 1], clean[:, 1])
    assert _tl.attached_hook_count(model) == 0


def test_mean_ablation_all_positions_and_stats_input(model, tokens):
    st = collect_stats(model, tokens, ["attn0"], progress=False)
    store: dict = {}
    hooks = mean_ablation("attn0", st["attn0"], model=model)  # float64 stats, float32 model
    with model.hooks(fwd_hooks=hooks + capture("blocks.0.hook_attn_out", store)):
        model(tokens)
    expect = st["attn0"].mean.float().expand(6, 5, D)
    assert store["blocks.0.hook_attn_out"].dtype == torch.float32
    assert torch.equal(store["blocks.0.hook_attn_out"], expect)


def test_two_ablations_compose(model, tokens):
    mean = torch.full((D,), 0.5)
    store: dict = {}
    hooks = (
        zero_ablation("mlp0", positions=[0])
        + mean_ablation("mlp0", mean, positions=[2])
        + zero_ablation("attn2")
        + capture("blocks.0.hook_mlp_out", store)
        + capture("blocks.2.hook_attn_out", store)
    )
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_mlp_out")
    model.run_with_hooks(tokens, fwd_hooks=hooks)
    got = store["blocks.0.hook_mlp_out"]
    assert (got[:, 0] == 0).all() and (got[:, 2] == 0.5).all()
    # mlp0 sees an unchanged input, so untouched positions equal the clean run
    assert torch.equal(got[:, [1, 3, 4]], cache["blocks.0.hook_mlp_out"][:, [1, 3, 4]])
    assert (store["blocks.2.hook_attn_out"] == 0).all()


def test_head_ablation_removes_head_contribution(model, tokens):
    _, cache = model.run_with_cache(tokens)
    store: dict = {}
    model.run_with_hooks(
        tokens,
        fwd_hooks=zero_ablation("attn0.h2", model=model) + capture("blocks.0.hook_attn_out", store),
    )
    z = cache["blocks.0.attn.hook_z"][:, :, 2]
    head = torch.einsum("bpd,dm->bpm", z, model.blocks[0].attn.W_O[2])
    expect = cache["blocks.0.hook_attn_out"] - head
    torch.testing.assert_close(store["blocks.0.hook_attn_out"], expect, atol=1e-5, rtol=0)


def test_head_mean_ablation_shape_checked(model):
    mean_ablation("attn1.h0", torch.zeros(4), model=model)  # d_head = 4
    with pytest.raises(ValueError, match=r"expected \(4,\) \(d_head = 4\)"):
        mean_ablation("attn1.h0", torch.zeros(D), model=model)


def test_resample_ablation(model, tokens):
    src = torch.randint(0, 50, (4, 5), generator=torch.Generator().manual_seed(5))
    _, src_cache = model.run_with_cache(src, names_filter="blocks.1.hook_mlp_out")
    src_acts = src_cache["blocks.1.hook_mlp_out"]
    store: dict = {}
    hooks = resample_ablation("mlp1", src, positions=[3], model=model, seed=7)
    model.run_with_hooks(tokens, fwd_hooks=hooks + capture("blocks.1.hook_mlp_out", store))
    got = store["blocks.1.hook_mlp_out"][:, 3]
    # every row got some source row's activation at the same position
    d = (got[:, None] - src_acts[None, :, 3]).abs().amax(-1)
    assert (d.min(1).values == 0).all()
    # the same seed with the activations themselves replays the same draws
    store2: dict = {}
    hooks2 = resample_ablation("mlp1", src_acts, positions=[3], seed=7)
    model.run_with_hooks(tokens, fwd_hooks=hooks2 + capture("blocks.1.hook_mlp_out", store2))
    assert torch.equal(store2["blocks.1.hook_mlp_out"], store["blocks.1.hook_mlp_out"])


def test_resample_head_and_too_short_source(model, tokens):
    src = torch.randint(0, 50, (3, 5))
    hooks = resample_ablation("attn1.h1", src, model=model)
    assert model.run_with_hooks(tokens, fwd_hooks=hooks).shape == (6, 5, 50)
    short = torch.randn(3, 2, D)
    with pytest.raises(ValueError, match="position 4 is needed"):
        model.run_with_hooks(tokens, fwd_hooks=resample_ablation("mlp0", short))
    assert _tl.attached_hook_count(model) == 0
    with pytest.raises(ValueError, match="needs model="):
        resample_ablation("mlp0", src)


def test_hook_repr_is_readable():
    ((_, fn),) = zero_ablation("attn1.h2", positions=[-1])
    assert repr(fn) == "zero_ablation(attn1.h2, positions=[-1])"


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: zero_ablation("mlpx"), "cannot parse site 'mlpx'"),
        (lambda m: zero_ablation("mlp3", model=m), r"layer out of range: 3, model has layers 0..2"),
        (lambda m: zero_ablation("attn0.h9", model=m), "head out of range: 9"),
        (lambda m: zero_ablation("mlp0", positions=["1"]), "positions must be None, an int"),
        (lambda m: zero_ablation("mlp0", positions=[]), "at least one position"),
        (
            lambda m: resample_ablation("mlp0", torch.zeros(2, 3, D), seed="a"),
            "seed must be an int, got 'a'",
        ),
        (lambda m: mean_ablation("mlp0", torch.zeros(7), model=m), r"expected \(16,\)"),
        (lambda m: mean_ablation("mlp0", torch.zeros(2, D)), "1-d float vector"),
        (
            lambda m: mean_ablation("mlp0", torch.tensor([float("nan")] * D)),
            "non-finite",
        ),
        (lambda m: mean_ablation("mlp0", torch.full((D,), float("inf"))), "non-finite"),
        (lambda m: ablation_hooks(m, ["mlp0"], "mean"), "needs means="),
        (lambda m: ablation_hooks(m, ["mlp0"], "mean", means={}), r"no entry for sites \['mlp0'\]"),
        (lambda m: ablation_hooks(m, ["mlp0"], "drop"), "method must be one of"),
        (lambda m: nested_average([torch.zeros(1)], [0]), "counts must be >= 1"),
        (lambda m: resolve_positions([5], 5), r"allowed positions are 0..4 or -5..-1"),
    ],
)
def test_bad_input(model, call, match):
    with pytest.raises(ValueError, match=match):
        call(model)


def test_position_out_of_range_inside_hook_leaves_model_clean(model, tokens):
    before = snapshot(model)
    hooks = zero_ablation("mlp0", positions=[7])  # checked when the hook sees the sequence
    with pytest.raises(ValueError, match=r"position out of range at blocks.0.hook_mlp_out: 7"):
        model.run_with_hooks(tokens, fwd_hooks=hooks)
    with pytest.raises(ValueError, match="position out of range"), model.hooks(fwd_hooks=hooks):
        model(tokens)
    assert_clean(model, before)


def test_mean_width_checked_inside_hook_without_model(model, tokens):
    with pytest.raises(ValueError, match="has width 7 but the activation"):
        model.run_with_hooks(tokens, fwd_hooks=mean_ablation("mlp0", torch.zeros(7)))
    assert _tl.attached_hook_count(model) == 0


# -- means -----------------------------------------------------------------------------------------
def test_nested_average_known_numbers():
    means = [torch.tensor([1.0]), torch.tensor([10.0]), torch.tensor([100.0])]
    # r1 = 1*2/2 = 1; r2 = (1 + 10*5)/5 = 10.2; r3 = (10.2 + 100*4)/4 = 102.55
    assert nested_average(means, [2, 5, 4]).item() == pytest.approx(102.55)
    # GPT-2-medium code: counter runs 20x per input -> mean_t/20 + mean_c/(20*20*n_t)
    got = nested_average([torch.tensor([3.0]), torch.tensor([8.0])], [7, 5], counts_per_input=20)
    assert got.item() == pytest.approx(8 / 20 + 3 / (20 * 20 * 5))
    # toy: pp, nn, pn, np with n = 50 -> np + pn/50 + nn/2500 + pp/125000
    ms = [torch.tensor([a]) for a in (1.0, 2.0, 3.0, 4.0)]
    assert nested_average(ms, [50] * 4).item() == pytest.approx(4 + 3 / 50 + 2 / 2500 + 1 / 125000)


def test_ablation_means_match_direct_computation(model):
    g = torch.Generator().manual_seed(3)
    sets = {
        "a": torch.randint(0, 50, (5, 4), generator=g),
        "b": torch.randint(0, 50, (2, 6), generator=g),
    }
    got = ablation_means(model, sets, ["mlp0", "attn1.h3", "embed"], positions=[1], progress=False)
    rows = {"mlp0": [], "z": [], "embed": []}
    for t in sets.values():
        _, c = model.run_with_cache(t)
        rows["mlp0"].append(c["blocks.0.hook_mlp_out"][:, 1])
        rows["z"].append(c["blocks.1.attn.hook_z"][:, 1, 3])
        rows["embed"].append(c["hook_embed"][:, 1])
    pooled = {k: torch.cat(v).double().mean(0) for k, v in rows.items()}  # plain mean over 7 rows
    torch.testing.assert_close(got["mlp0"], pooled["mlp0"], atol=1e-6, rtol=0)
    torch.testing.assert_close(got["attn1.h3"], pooled["z"], atol=1e-6, rtol=0)
    torch.testing.assert_close(got["embed"], pooled["embed"], atol=1e-6, rtol=0)
    ref = mean_reference_code(model, sets, ["mlp0"], positions=[1], progress=False)
    per_set = [torch.cat([r]).double().mean(0) for r in rows["mlp0"]]
    torch.testing.assert_close(ref["mlp0"], nested_average(per_set, [5, 2]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="ordered mapping"):
        mean_reference_code(model, sets["a"], ["mlp0"])


# -- sweep ---------------------------------------------------------------------------------------
def test_sweep_matches_direct_runs(model, tokens, groups):
    metrics = group_metrics(groups, positions=(-1,))
    sites = ["attn0", "mlp1", "attn2.h1"]
    means = ablation_means(model, tokens, sites, positions=[1], progress=False)
    df = ablation_sweep(
        model,
        {"x": tokens},
        metrics,
        sites,
        combos={"both": ["attn0", "mlp1"]},
        means=means,
        batch_size=4,
        progress=False,
    )
    assert list(df.columns) == [
        "site",
        "paper_name",
        "sites",
        "layer",
        "kind",
        "head",
        "method",
        "input_set",
        "metric",
        "value",
        "n",
        "ablation",
    ]
    assert list(df.site.unique()) == ["unchanged", "attn0", "mlp1", "attn2.h1", "both"]
    assert (df.ablation == df.site).all()  # the former name, kept for existing code
    assert (df.n == 6).all()
    kinds = df.groupby("site", sort=False)["kind"].agg(lambda k: sorted(set(k.dropna())))
    assert kinds.to_dict() == {
        "unchanged": [],
        "attn0": ["attn"],
        "mlp1": ["mlp"],
        "attn2.h1": ["attn"],
        "both": ["combo"],
    }
    assert df[df.site == "attn2.h1"]["head"].tolist() == [1, 1]
    val = df.set_index(["site", "metric"])["value"]
    for m, metric in metrics.items():
        assert val["unchanged", m] == pytest.approx(float(metric(model(tokens))), abs=1e-6)
        for label, ss in [
            ("attn0", ["attn0"]),
            ("mlp1", ["mlp1"]),
            ("attn2.h1", ["attn2.h1"]),
            ("both", ["attn0", "mlp1"]),
        ]:
            hooks = ablation_hooks(model, ss, "mean", means=means)
            direct = float(metric(model.run_with_hooks(tokens, fwd_hooks=hooks)))
            assert val[label, m] == pytest.approx(direct, abs=1e-6), (label, m)
    assert _tl.attached_hook_count(model) == 0


def test_sweep_plain_callable_and_resample(model, tokens, groups):
    gm = GroupMetric(groups, "neg", positions=(-1,))

    def plain(logits):  # a user's metric: full logits in, batch mean out, no declared positions
        return gm(logits)

    df = ablation_sweep(
        model, tokens, {"fast": gm, "plain": plain}, ["mlp0"], method="zero", progress=False
    )
    v = df.pivot_table(index="ablation", columns="metric", values="value")
    assert (v["fast"] - v["plain"]).abs().max() < 1e-9
    a = ablation_sweep(model, tokens, gm, ["mlp0"], method="resample", seed=3, progress=False)
    b = ablation_sweep(model, tokens, gm, ["mlp0"], method="resample", seed=3, progress=False)
    assert a.value.tolist() == b.value.tolist()
    assert set(a.method) == {"none", "resample"}


def test_sweep_resumed_blocks_match_full_runs(model, tokens, groups):
    """Ablations re-run only the blocks from their first site; over several batches, with a
    stateful resample hook, a site before the blocks and a user's own hook, the values equal full
    forward passes."""
    gm = GroupMetric(groups, "neg", stat="prob", positions=(-1,))
    user = [("hook_embed", lambda act, hook: act * 0.5)]  # changes every layer's input
    with model.hooks(fwd_hooks=user):
        df = ablation_sweep(
            model,
            tokens,
            gm,
            ["mlp1", "embed"],
            method="resample",
            seed=3,
            batch_size=4,
            progress=False,
        )
        got = df.set_index("ablation")["value"]
        for site in ["mlp1", "embed"]:
            hooks = resample_ablation(site, tokens, model=model, seed=3)
            with model.hooks(fwd_hooks=hooks), torch.no_grad():
                parts = [float(gm(model(b))) * len(b) for b in tokens.split(4)]
            assert got[site] == pytest.approx(sum(parts) / len(tokens), abs=1e-6), site
        with torch.no_grad():
            assert got["unchanged"] == pytest.approx(float(gm(model(tokens))), abs=1e-6)
    assert _tl.attached_hook_count(model) == 0


def test_sweep_bad_input(model, groups):
    metrics = group_metrics(groups)
    ragged = [torch.tensor([1, 2, 3]), torch.tensor([1, 2])]
    with pytest.raises(ValueError, match="unequal lengths"):
        ablation_sweep(model, {"r": ragged}, metrics, method="zero", progress=False)
    t = torch.randint(0, 50, (2, 3))
    with pytest.raises(ValueError, match=r"position out of range at input set 'x': 3"):
        ablation_sweep(model, {"x": t}, metrics, method="zero", positions=[3], progress=False)
    with pytest.raises(ValueError, match="layer out of range: 4"):
        ablation_sweep(model, t, metrics, ["mlp4"], method="zero", progress=False)
    with pytest.raises(ValueError, match="cannot parse site 'ffn0'"):
        ablation_sweep(model, t, metrics, ["ffn0"], method="zero", progress=False)
    with pytest.raises(ValueError, match="needs means="):
        ablation_sweep(model, t, metrics, progress=False)
    with pytest.raises(ValueError, match=r"mean for 'mlp0' has shape \(3,\)"):
        ablation_sweep(model, t, metrics, ["mlp0"], means={"mlp0": torch.zeros(3)}, progress=False)
    with pytest.raises(ValueError, match="single site 'mlp0'"):
        ablation_sweep(model, t, metrics, [], combos=["mlp0"], method="zero", progress=False)


def test_user_metric_error_leaves_model_clean(model, tokens):
    before = snapshot(model)

    def bad(logits):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        ablation_sweep(model, tokens, bad, ["mlp0"], method="zero", progress=False)
    assert_clean(model, before)
    with pytest.raises(ValueError, match="must return a scalar"):
        ablation_sweep(
            model, tokens, lambda lg: lg[0, 0, :3], ["mlp0"], method="zero", progress=False
        )
    assert_clean(model, before)


def test_ablation_table_layouts(model, tokens, groups):
    df = ablation_sweep(
        model,
        {"pt": tokens, "pp": tokens[:3]},
        group_metrics(groups),
        combos=[["mlp0", "mlp2"]],
        method="zero",
        progress=False,
    )
    site = ablation_table(df)
    assert site.index.tolist() == [
        "L1 attn",
        "L1 mlp",
        "L2 attn",
        "L2 mlp",
        "L3 attn",
        "L3 mlp",
        "L1 mlp + L3 mlp",
        "Unchanged",
    ]
    assert site.columns.tolist() == [("pt", "neg"), ("pt", "pos"), ("pp", "neg"), ("pp", "pos")]
    layer = ablation_table(df[(df.input_set == "pt") & (df.metric == "neg")], "layer")
    assert layer.index.tolist() == ["1", "2", "3", "Unchanged"]
    assert layer.columns.tolist() == ["attn", "mlp"]
    sel = df[(df.input_set == "pt") & (df.metric == "neg")].set_index("ablation")["value"]
    assert layer.loc["2", "mlp"] == sel["mlp1"]
    assert layer.loc["Unchanged", "attn"] == layer.loc["Unchanged", "mlp"] == sel["unchanged"]
    short = ablation_table(df, names="short")
    assert short.index[-2:].tolist() == ["mlp0+mlp2", "unchanged"]
    both = ablation_table(df[df.input_set == "pt"], "layer")
    assert both.columns.tolist() == [
        ("neg", "attn"),
        ("neg", "mlp"),
        ("pos", "attn"),
        ("pos", "mlp"),
    ]
    assert not both.isna().any().any()


def test_follows_model_dtype(groups):
    model = tiny_model(n_layers=1, dtype=torch.float64)
    tokens = torch.randint(0, 50, (3, 4))
    store: dict = {}
    hooks = mean_ablation("mlp0", torch.full((D,), 0.25), model=model)  # float32 mean
    model.run_with_hooks(tokens, fwd_hooks=hooks + capture("blocks.0.hook_mlp_out", store))
    assert store["blocks.0.hook_mlp_out"].dtype == torch.float64
    assert (store["blocks.0.hook_mlp_out"] == 0.25).all()
    means = ablation_means(model, tokens, ["mlp0"], progress=False)
    df = ablation_sweep(model, tokens, group_metrics(groups), ["mlp0"], means=means, progress=False)
    assert df.value.notna().all()


@pytest.mark.skipif(_tl.BACKEND == "bridge", reason="TransformerLens 4 has no shortformer models")
def test_sweep_on_shortformer_runs_whole_model(groups):
    """Shortformer blocks add positional embeddings themselves, so a residual cannot resume them:
    the sweep falls back to full forward passes and still equals direct runs."""
    cfg = _tl.HookedTransformerConfig(
        n_layers=2,
        d_model=16,
        n_ctx=8,
        d_head=4,
        n_heads=4,
        d_vocab=50,
        act_fn="gelu_new",
        positional_embedding_type="shortformer",
        seed=0,
        device="cpu",
    )
    model = _tl.new_model(cfg)
    assert not _tl.blocks_resumable(model)
    tokens = torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(1))
    gm = GroupMetric(groups, "neg", stat="prob", positions=(-1,))  # continuous, not top-k
    df = ablation_sweep(model, tokens, gm, ["mlp1"], method="zero", progress=False)
    got = df.set_index("ablation")["value"]
    with torch.no_grad():
        direct = model.run_with_hooks(tokens, fwd_hooks=ablation_hooks(model, ["mlp1"], "zero"))
    assert got["mlp1"] == pytest.approx(float(gm(direct)), abs=1e-6)


def test_sweep_per_pair_values_are_each_prompt_swept_alone(model, tokens, groups):
    metric = GroupMetric(groups, "neg", stat="prob", positions=(-1,))
    means = ablation_means(model, tokens, ["mlp1", "attn0.h1"], positions=[2])
    kw = dict(sites=["mlp1", "attn0.h1"], means=means, positions=[2], progress=False)
    df = ablation_sweep(model, tokens, metric, per_pair=True, batch_size=4, **kw)
    alone = [ablation_sweep(model, tokens[i : i + 1], metric, **kw) for i in range(len(tokens))]
    for j, row in enumerate(df.itertuples()):
        assert row.pairs == pytest.approx([float(a["value"].iloc[j]) for a in alone], abs=1e-6)
        assert sum(row.pairs) / len(row.pairs) == pytest.approx(row.value, abs=1e-9)
