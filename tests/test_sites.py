"""Sites: parsing, names, hook names against a real model, forward order, validation errors."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pcp_lens.sites import KINDS, Site, all_sites, as_sites

ALL_KINDS = ("embed", "attn", "mlp", "resid_pre", "resid_mid", "resid_post")


def test_kinds_constant_is_the_documented_set():
    assert set(KINDS) == set(ALL_KINDS)


# -- parsing -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "layer", "kind", "head"),
    [
        ("embed", None, "embed", None),
        ("attn0", 0, "attn", None),
        ("attn12", 12, "attn", None),
        ("attn0.h2", 0, "attn", 2),
        ("attn3.h11", 3, "attn", 11),
        ("mlp0", 0, "mlp", None),
        ("mlp7", 7, "mlp", None),
        ("resid_pre1", 1, "resid_pre", None),
        ("resid_mid1", 1, "resid_mid", None),
        ("resid_post1", 1, "resid_post", None),
        ("  mlp2 ", 2, "mlp", None),
        ("blocks.0.hook_mlp_out", 0, "mlp", None),
        ("blocks.4.hook_attn_out", 4, "attn", None),
        ("blocks.2.hook_resid_pre", 2, "resid_pre", None),
        ("blocks.2.hook_resid_mid", 2, "resid_mid", None),
        ("blocks.10.hook_resid_post", 10, "resid_post", None),
    ],
)
def test_parse_every_documented_form(spec, layer, kind, head):
    s = Site.parse(spec)
    assert (s.layer, s.kind, s.head) == (layer, kind, head)
    assert s == Site(layer, kind, head)


def test_parse_passes_a_site_through():
    s = Site(1, "mlp")
    assert Site.parse(s) is s


@pytest.mark.parametrize(
    "bad",
    ["", "mlp", "mlp-1", "MLP0", "attn0.2", "mlp0.h1x", "L1.attn", "blocks.0.hook_z", "foo0"],
)
def test_parse_refuses_unknown_strings(bad):
    with pytest.raises(ValueError, match=r"cannot parse site .*use e\.g\. 'mlp0'"):
        Site.parse(bad)


def test_parse_refuses_a_head_on_mlp_even_if_it_matches_the_pattern():
    with pytest.raises(ValueError, match="head must be None or an int >= 0 on an 'attn' site"):
        Site.parse("mlp0.h1")


@pytest.mark.parametrize("bad", [3, None, 1.5, ("mlp", 0)])
def test_parse_refuses_non_strings(bad):
    with pytest.raises(TypeError, match="site must be a Site or a string"):
        Site.parse(bad)


sites_strategy = st.one_of(
    st.just(Site(None, "embed")),
    st.builds(
        Site,
        st.integers(0, 200),
        st.sampled_from(["attn", "mlp", "resid_pre", "resid_mid", "resid_post"]),
    ),
    st.builds(Site, st.integers(0, 200), st.just("attn"), st.integers(0, 200)),
)


@given(sites_strategy)
def test_round_trip_name(s):
    assert Site.parse(s.name) == s
    assert str(s) == s.name
    if s.kind != "embed" and s.head is None:
        assert Site.parse(s.hook_name) == s  # full hook names round-trip as well


def test_names_and_paper_names_are_1_based():
    assert Site(0, "mlp").name == "mlp0"
    assert Site(0, "mlp").paper_name == "L1 mlp"
    assert Site(0, "attn").paper_name == "L1 attn"
    assert Site(2, "attn", 3).name == "attn2.h3"
    assert Site(2, "attn", 3).paper_name == "L3 att3"  # heads keep the paper's 0-based index
    assert Site(1, "resid_pre").paper_name == "L2 resid_pre"
    assert Site(1, "resid_post").paper_name == "L2 resid_post"
    assert Site(None, "embed").paper_name == "embd"
    assert Site(None, "embed").name == "embed"


def test_hook_names():
    assert Site(0, "mlp").hook_name == "blocks.0.hook_mlp_out"
    assert Site(1, "attn").hook_name == "blocks.1.hook_attn_out"
    assert Site(1, "attn", 2).hook_name == "blocks.1.attn.hook_z"
    assert Site(2, "resid_pre").hook_name == "blocks.2.hook_resid_pre"
    assert Site(2, "resid_mid").hook_name == "blocks.2.hook_resid_mid"
    assert Site(2, "resid_post").hook_name == "blocks.2.hook_resid_post"
    assert Site(None, "embed").hook_name == "hook_embed"
    assert Site(0, "attn").input_hook_name == "blocks.0.ln1.hook_normalized"
    assert Site(2, "mlp").input_hook_name == "blocks.2.ln2.hook_normalized"
    assert Site(2, "attn", 1).input_hook_name == "blocks.2.ln1.hook_normalized"


@pytest.mark.parametrize("site", [Site(None, "embed"), Site(0, "resid_pre"), Site(1, "resid_post")])
def test_input_hook_name_only_for_modules(site):
    with pytest.raises(ValueError, match="has no module input; only attn and mlp sites do"):
        _ = site.input_hook_name


def test_every_site_hook_exists_in_the_model(model):
    sites = all_sites(model, kinds=ALL_KINDS, heads=True)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    assert len(sites) == 1 + n_layers * (5 + n_heads)
    for s in sites:
        assert s.hook_name in model.hook_dict, s
        if s.kind in ("attn", "mlp"):
            assert s.input_hook_name in model.hook_dict, s
    assert len(set(sites)) == len(sites)  # no duplicates; sites are hashable values


def test_site_hooks_carry_the_documented_tensors(model):
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 5))
    _, cache = model.run_with_cache(tokens)
    d = model.cfg.d_model
    for s in all_sites(model, kinds=ALL_KINDS, heads=True):
        act = cache[s.hook_name]
        if s.head is None:
            assert act.shape == (2, 5, d), s
        else:
            assert act.shape == (2, 5, model.cfg.n_heads, model.cfg.d_head), s
    # resid_mid = resid_pre + attn out, resid_post = resid_mid + mlp out
    for layer in range(model.cfg.n_layers):
        pre, mid, post = (
            cache[Site(layer, k).hook_name] for k in ("resid_pre", "resid_mid", "resid_post")
        )
        torch.testing.assert_close(mid, pre + cache[Site(layer, "attn").hook_name])
        torch.testing.assert_close(post, mid + cache[Site(layer, "mlp").hook_name])


def test_all_sites_default_and_kind_filter(model):
    assert [s.name for s in all_sites(model)] == ["attn0", "mlp0", "attn1", "mlp1", "attn2", "mlp2"]
    # the order of `kinds` does not matter, the forward order does
    assert [s.name for s in all_sites(model, kinds=["resid_post", "mlp", "embed"])] == [
        "embed", "mlp0", "resid_post0", "mlp1", "resid_post1", "mlp2", "resid_post2",
    ]  # fmt: skip
    names = [s.name for s in all_sites(model, kinds=["attn"], heads=True)]
    assert names[:6] == ["attn0", "attn0.h0", "attn0.h1", "attn0.h2", "attn0.h3", "attn1"]


def test_all_sites_is_in_forward_order(model):
    """The order in which TransformerLens fires the sites' hooks is the order of all_sites."""
    sites = all_sites(model, kinds=ALL_KINDS, heads=True)
    fired: list[str] = []

    def record(act, hook):
        fired.append(hook.name)

    names = sorted({s.hook_name for s in sites})
    model.run_with_hooks(torch.tensor([[1, 2, 3]]), fwd_hooks=[(n, record) for n in names])
    rank = {n: i for i, n in enumerate(fired)}
    assert len(rank) == len(names)  # each hook fired once
    whole = [s for s in sites if s.head is None]
    assert [rank[s.hook_name] for s in whole] == sorted(rank[s.hook_name] for s in whole)
    assert whole == sorted(whole, key=Site.sort_key)
    assert sites == sorted(sites, key=Site.sort_key)
    # heads (read from hook_z) sit inside their attention layer: after resid_pre, before resid_mid
    for s in sites:
        if s.head is not None:
            assert rank[Site(s.layer, "resid_pre").hook_name] < rank[s.hook_name]
            assert rank[s.hook_name] < rank[Site(s.layer, "resid_mid").hook_name]


def test_all_sites_unknown_kind(model):
    with pytest.raises(ValueError, match=r"unknown site kind: 'head'; allowed: embed, attn, mlp"):
        all_sites(model, kinds=["attn", "head"])


# -- validation --------------------------------------------------------------------------------
def test_layer_out_of_range_message(model):
    with pytest.raises(ValueError) as e:
        Site(5, "mlp").validate(model)
    assert str(e.value).startswith("layer out of range: 5, model has layers 0..2")
    assert "'mlp5'" in str(e.value)
    with pytest.raises(ValueError, match=re.escape("layer out of range: 3, model has layers 0..2")):
        as_sites(["mlp0", "attn3"], model)


def test_head_out_of_range_message(model):
    with pytest.raises(ValueError, match=re.escape("head out of range: 4, model has heads 0..3")):
        Site(0, "attn", 4).validate(model)
    assert Site(0, "attn", 3).validate(model) == Site(0, "attn", 3)


def test_validate_returns_the_site_and_accepts_the_last_layer(model):
    for s in all_sites(model, kinds=ALL_KINDS, heads=True):
        assert s.validate(model) is s


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        ((0, "head"), "unknown site kind: 'head'; allowed: embed, attn, mlp, resid_pre"),
        ((0, "Attn"), "unknown site kind: 'Attn'"),
        ((0, "z"), "unknown site kind: 'z'"),
        ((-1, "mlp"), "layer must be an int >= 0 for kind 'mlp', got -1"),
        ((None, "mlp"), "layer must be an int >= 0 for kind 'mlp', got None"),
        ((1.0, "mlp"), "layer must be an int >= 0 for kind 'mlp', got 1.0"),
        ((True, "attn"), "layer must be an int >= 0 for kind 'attn', got True"),
        ((0, "embed"), "layer must be None for kind 'embed', got 0"),
        ((0, "attn", -1), "head must be None or an int >= 0 on an 'attn' site, got head=-1"),
        ((0, "attn", 1.0), "head must be None or an int >= 0 on an 'attn' site, got head=1.0"),
        ((0, "mlp", 1), "got head=1 on kind 'mlp'"),
        ((0, "resid_pre", 0), "got head=0 on kind 'resid_pre'"),
    ],
)
def test_constructor_errors(args, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        Site(*args)


def test_as_sites():
    assert as_sites("mlp0") == [Site(0, "mlp")]
    assert as_sites(Site(1, "attn")) == [Site(1, "attn")]
    assert as_sites(["mlp0", Site(1, "attn"), "blocks.2.hook_resid_post"]) == [
        Site(0, "mlp"),
        Site(1, "attn"),
        Site(2, "resid_post"),
    ]
    assert as_sites(s for s in ["attn0.h1"]) == [Site(0, "attn", 1)]


def test_sites_are_frozen_and_hashable():
    s = Site(0, "mlp")
    with pytest.raises(AttributeError):
        s.layer = 1  # type: ignore[misc]
    assert {s: 1}[Site.parse("mlp0")] == 1
