"""Rich displays: compact HTML in Jupyter, readable text elsewhere."""

from __future__ import annotations

import re

import pytest
import torch

from pcp_lens import TokenGroups, all_sites, as_sites, fit_pcp, tune
from pcp_lens.display import toy_results_html
from pcp_lens.groups import GroupMetric
from pcp_lens.sites import Site, SiteList
from pcp_lens.testing import tiny_model


def cells(html: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", html)


def test_pcp_replacement_html_has_sites_ranks_scales_variance_fingerprint():
    model = tiny_model()
    pcp = fit_pcp(model, torch.randint(0, 50, (32, 4)), ["mlp0", "attn1"], {"mlp0": 2, "attn1": 1},
                  progress=False)
    html = pcp._repr_html_()
    c = cells(html)
    assert c[:3] == ["mlp0 (L1 mlp)", "2", "principal"]
    a = pcp.part("mlp0").scales.tolist()
    assert c[3] == "[" + ", ".join(format(v, ".4g") for v in a) + "]"
    evr = pcp.part("mlp0").explained_variance_ratio.tolist()
    assert c[5] == "[" + ", ".join(format(v, ".1%") for v in evr) + "]"
    assert "attn1 (L2 attn)" in c
    assert "d_model=16" in html and "fold_ln=" in html
    assert repr(pcp).startswith("PCPReplacement(mlp0: rank 2 principal, α=[")


def test_token_groups_repr_is_short_and_html_reports_overlap():
    with pytest.warns(UserWarning, match="overlap"):
        g = TokenGroups({"neg": range(100), "pos": range(90, 200)}, d_vocab=300)
    assert repr(g) == (
        "TokenGroups(neg: 100 ids [0, 1, 2, 3, 4, 5, 6, 7, …], "
        "pos: 110 ids [90, 91, 92, 93, 94, 95, 96, 97, …]; d_vocab=300)"
    )
    html = g._repr_html_()
    assert cells(html)[:2] == ["neg", "100"]
    assert "neg∩pos: 10" in html


def test_site_lists_show_paper_names():
    sites = all_sites(tiny_model(n_layers=1), heads=True)
    assert isinstance(sites, SiteList) and isinstance(sites, list)
    assert repr(sites).startswith("[attn0 (L1 attn), attn0.h0 (L1 att0),")
    html = sites._repr_html_()
    assert cells(html)[:6] == ["attn0", "L1 attn", "0", "attn", "—", "blocks.0.hook_attn_out"]
    assert as_sites(["mlp0"]) == [Site(0, "mlp")]


def test_tune_result_displays():
    model = tiny_model()
    sets = {"a": torch.randint(0, 50, (8, 3)), "b": torch.randint(0, 50, (8, 3))}
    pcp = fit_pcp(model, torch.cat(list(sets.values())), "mlp0", 1, progress=False)
    neg = GroupMetric(TokenGroups({"neg": range(10)}, d_vocab=50), "neg", k=5)
    res = tune(model, pcp, sets, neg, n_trials=3, progress=False)
    text = repr(res)
    assert text.startswith("TuneResult(3 trials, best loss ")
    assert f"a {res.scores['a']:.3f} (target {res.target['a']:.3f})" in text
    html = res._repr_html_()
    assert cells(html)[:3] == ["a", f"{res.target['a']:.3f}", f"{res.scores['a']:.3f}"]
    assert "mlp0 (L1 mlp)" in html


def test_toy_results_html():
    r = {
        "config": {"quick": True},
        "2sent": {"unedited": {"pt": 0.91, "nn": 1.0}, "seconds": {"train": 3.0, "tab1": 1.0}},
        "findings": {"2sent": {"F1": {"holds": False, "holds_prob": None, "detail": "p+t <b>"}}},
        "seconds_total": 4.0,
    }
    html = toy_results_html(r)
    assert html._repr_html_() == str(html)
    assert cells(html)[:4] == ["2sent", "0.910", "1.000", "4"]
    assert cells(html)[4:9] == ["2sent", "F1", "fails", "not judged", "p+t &lt;b&gt;"]  # escaped
    flat = {**r, "findings": {"F1": {"holds": True, "detail": "d"}}}
    assert cells(toy_results_html(flat))[4:9] == ["", "F1", "holds", "—", "d"]
    seeds = toy_results_html({"seeds": {"0": r, "1": flat}})
    assert seeds.count("<h4>seed") == 2 and cells(seeds)[:4] == cells(html)[:4]
