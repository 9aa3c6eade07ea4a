"""Tests for pcp_lens.lens: logit-lens logits against independent references, tables, hygiene."""

from __future__ import annotations

import pytest
import torch

from pcp_lens import _tl
from pcp_lens.groups import GroupMetric, TokenGroups, group_metrics
from pcp_lens.lens import group_lens, lens_logits, lens_table
from pcp_lens.sites import all_sites
from pcp_lens.testing import tiny_model

ALL = list(range(5))


@pytest.fixture(scope="module")
def model():
    return tiny_model(n_layers=3, seed=2)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 50, (6, 5), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def cache(model, tokens):
    return model.run_with_cache(tokens)[1]


@pytest.fixture(scope="module")
def groups():
    return TokenGroups({"neg": list(range(12)), "pos": list(range(12, 30))}, d_vocab=50)


def ref_isolated(model, x):
    """The paper's projection, computed independently: ln_final on the isolated vector, unembed."""
    with torch.no_grad():
        return model.unembed(model.ln_final(x))


def test_full_row_and_last_resid_post(model, tokens, groups):
    out = lens_logits(model, tokens, ["resid_post2"], ALL)
    assert torch.equal(out["resid_post2"], out["full"])
    with torch.no_grad():
        torch.testing.assert_close(out["full"], model(tokens), atol=1e-5, rtol=0)
    df = group_lens(model, tokens, groups, [0, -1], progress=False)
    t = lens_table(df, names="short")
    assert t.loc["resid_post2"].tolist() == t.loc["full"].tolist()
    for m, metric in group_metrics(groups, positions=(-1,)).items():
        assert t.loc["full", (-1, m)] == pytest.approx(float(metric(model(tokens))), abs=1e-6)


def test_isolated_logits_match_reference(model, tokens, cache):
    sites = all_sites(model, kinds=("embed", "attn", "mlp", "resid_mid"))
    out = lens_logits(model, tokens, sites, ALL)
    refs = {"embed": cache["hook_embed"] + cache["hook_pos_embed"]}
    for layer in range(3):
        refs[f"attn{layer}"] = cache[f"blocks.{layer}.hook_attn_out"]
        refs[f"mlp{layer}"] = cache[f"blocks.{layer}.hook_mlp_out"]
        refs[f"resid_mid{layer}"] = cache[f"blocks.{layer}.hook_resid_mid"]
    for name, x in refs.items():
        torch.testing.assert_close(out[name], ref_isolated(model, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_head_rows(model, tokens, cache, bias):
    heads = [f"attn{layer}.h{h}" for layer in range(3) for h in range(4)]
    out = lens_logits(model, tokens, heads, ALL, include_bias=bias)
    for layer in range(3):
        attn = model.blocks[layer].attn
        z = cache[f"blocks.{layer}.attn.hook_z"]
        for h in range(4):
            x = z[:, :, h] @ attn.W_O[h] + (attn.b_O if bias else 0)
            got = out[f"attn{layer}.h{h}"]
            torch.testing.assert_close(got, ref_isolated(model, x), atol=1e-5, rtol=0)


def test_heads_sum_to_attention_output(model, tokens, cache):
    # with ln="none" the projection is affine: sum_h L(head_h) - (n-1) L(b_O) == L(attn_out)
    heads = [f"attn1.h{h}" for h in range(4)]
    out = lens_logits(model, tokens, ["attn1", *heads], ALL, ln="none")
    b_o = model.blocks[1].attn.b_O
    with torch.no_grad():
        l_bias = model.unembed(b_o.expand(1, 1, -1))
    total = sum(out[h] for h in heads) - 3 * l_bias
    torch.testing.assert_close(total, out["attn1"], atol=1e-4, rtol=0)
    # and on the vectors themselves
    z = cache["blocks.1.attn.hook_z"]
    outs = _tl.head_outputs(model, 1, z, bias=True)
    torch.testing.assert_close(
        outs.sum(2) - 3 * b_o, cache["blocks.1.hook_attn_out"], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("norm", ["LN", "RMS"])
def test_cached_ln_matches_apply_ln_to_stack(norm):
    model = tiny_model(n_layers=4, seed=5, normalization_type=norm)
    tokens = torch.randint(0, 50, (3, 6), generator=torch.Generator().manual_seed(2))
    _, cache = model.run_with_cache(tokens)
    names = ["attn0", "mlp1", "attn3", "resid_post2", "embed"]
    out = lens_logits(model, tokens, names, list(range(6)), ln="cached")
    stack = torch.stack(
        [
            cache["blocks.0.hook_attn_out"],
            cache["blocks.1.hook_mlp_out"],
            cache["blocks.3.hook_attn_out"],
            cache["blocks.2.hook_resid_post"],
            cache["blocks.0.hook_resid_pre"],
        ]
    )
    with torch.no_grad():
        normed = cache.apply_ln_to_stack(stack, layer=None)
        ln = model.ln_final
        normed = normed * ln.w + (ln.b if norm == "LN" else 0)
        ref = model.unembed(normed.flatten(0, 1)).reshape(5, 3, 6, -1)
    for i, name in enumerate(names):
        torch.testing.assert_close(out[name], ref[i], atol=1e-5, rtol=0)


def test_ln_none_is_plain_unembedding(model, tokens, cache):
    out = lens_logits(model, tokens, ["mlp2"], [1, 3], ln="none")
    x = cache["blocks.2.hook_mlp_out"][:, [1, 3]]
    ref = x @ model.unembed.W_U + model.unembed.b_U
    torch.testing.assert_close(out["mlp2"], ref, atol=1e-5, rtol=0)


def test_topk_shares_match_brute_force(model, tokens, groups):
    positions = [0, 2, -1]
    df = group_lens(
        model,
        tokens,
        group_metrics(groups, k=10),
        positions,
        ["mlp0", "attn1.h2"],
        batch_size=4,
        progress=False,
    )
    logits = lens_logits(model, tokens, ["mlp0", "attn1.h2"], positions)
    neg, pos = set(range(12)), set(range(12, 30))
    val = df.set_index(["site", "metric", "position"])["value"]
    for name in ("mlp0", "attn1.h2", "full"):
        for j, p in enumerate(positions):
            shares = {"neg": 0.0, "pos": 0.0}
            for b in range(tokens.shape[0]):
                row = logits[name][b, j].tolist()
                top = sorted(range(50), key=lambda i: -row[i])[:10]
                shares["neg"] += sum(i in neg for i in top) / 10
                shares["pos"] += sum(i in pos for i in top) / 10
            for g in ("neg", "pos"):
                assert val[name, g, p] == pytest.approx(shares[g] / tokens.shape[0], abs=1e-6)


def test_table_shape_and_defaults(model, tokens, groups):
    metrics = {
        "neg": GroupMetric(groups, "neg", positions=(0, 1)),
        "pos": GroupMetric(groups, "pos"),
    }
    df = group_lens(model, tokens, metrics, progress=False)  # positions from the metrics: 0, 1, -1
    assert sorted(df.position.unique().tolist()) == [-1, 0, 1]
    t = lens_table(df)
    assert t.index[0] == "embd" and t.index[-1] == "full model"
    assert t.index[1:7].tolist() == [
        "L1 attn",
        "L1 att0",
        "L1 att1",
        "L1 att2",
        "L1 att3",
        "L1 mlp",
    ]
    assert t.columns.tolist()[:2] == [(0, "neg"), (0, "pos")]
    assert len(t) == 1 + 3 * (1 + 4 + 1 + 1) + 1
    assert set(df.ln) == {"isolated"}


def test_logits_only_at_requested_positions(model, tokens, groups):
    sizes: list[int] = []

    def spy(act, hook):
        sizes.append(act.shape[:-1].numel())

    with model.hooks(fwd_hooks=[("unembed.hook_out", spy)]):  # a user's hook stays attached
        group_lens(model, tokens, groups, [1], ["mlp0"], progress=False)
        assert _tl.attached_hook_count(model) == 1
    assert sizes and max(sizes) <= tokens.shape[0]  # batch × 1 position, never batch × pos


def test_bad_input(model, tokens, groups):
    with pytest.raises(ValueError, match="ln must be one of 'isolated', 'cached', 'none'"):
        group_lens(model, tokens, groups, ln="final", progress=False)
    with pytest.raises(ValueError, match=r"position out of range at inputs: 5"):
        group_lens(model, tokens, groups, [5], progress=False)
    with pytest.raises(ValueError, match="unequal lengths"):
        group_lens(model, [torch.tensor([1, 2]), torch.tensor([3])], groups, progress=False)
    with pytest.raises(ValueError, match=r"layer out of range: 3, model has layers 0\.\.2"):
        lens_logits(model, tokens, ["mlp3"])
    with pytest.raises(ValueError, match="cannot parse site"):
        lens_logits(model, tokens, ["block2"])
    with pytest.raises(ValueError, match="metrics is an empty mapping"):
        group_lens(model, tokens, {}, progress=False)
    with pytest.raises(ValueError, match="names must be"):
        lens_table(group_lens(model, tokens, groups, [0], ["mlp0"], progress=False), "long")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=f"batch_size must be an int >= 1, got {bad!r}"):
            group_lens(model, tokens, groups, batch_size=bad, progress=False)
    with pytest.raises(
        ValueError, match=r"positions must be None, an int .*; got 1\.5 in \[1\.5\]"
    ):
        group_lens(model, tokens, groups, [1.5], progress=False)


def test_the_former_row_key_column_is_kept(model, tokens, groups):
    df = group_lens(model, tokens, groups, [0], ["mlp0"], progress=False)
    assert df.columns[0] == "site" and df.columns[-1] == "module"
    assert (df["module"] == df["site"]).all()


def test_metric_error_leaves_model_clean(model, tokens):
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def bad(logits):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        group_lens(model, tokens, bad, progress=False)
    assert _tl.attached_hook_count(model) == 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_error_inside_a_hook_during_lens_leaves_model_clean(model, tokens, groups):
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def boom(act, hook):
        raise RuntimeError("hook failed")

    with (
        pytest.raises(RuntimeError, match="hook failed"),
        model.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", boom)]),
    ):
        group_lens(model, tokens, groups, [0], progress=False)
    assert _tl.attached_hook_count(model) == 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_follows_model_dtype(groups):
    model = tiny_model(n_layers=1, dtype=torch.float64)
    tokens = torch.randint(0, 50, (2, 4))
    _, cache = model.run_with_cache(tokens)
    for ln in ("isolated", "cached", "none"):
        out = lens_logits(model, tokens, ["mlp0", "attn0.h1"], [0, 3], ln=ln)
        assert all(v.dtype == torch.float64 for v in out.values())
    out = lens_logits(model, tokens, ["mlp0"], [0, 3])
    ref = ref_isolated(model, cache["blocks.0.hook_mlp_out"][:, [0, 3]])
    torch.testing.assert_close(out["mlp0"], ref, atol=1e-12, rtol=0)
    assert group_lens(model, tokens, groups, [0], progress=False).value.notna().all()


def test_per_pair_lens_values_are_each_prompt_alone(model, tokens, groups):
    df = group_lens(model, tokens, groups, positions=[1, -1], per_pair=True, progress=False)
    alone = [
        group_lens(model, tokens[i : i + 1], groups, positions=[1, -1], progress=False)
        for i in range(len(tokens))
    ]
    for j, row in enumerate(df.itertuples()):
        assert row.pairs == pytest.approx([float(a["value"].iloc[j]) for a in alone], abs=1e-6)
    assert "se" in df.columns and df["se"].notna().all()
