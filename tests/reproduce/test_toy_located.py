"""The located claims are judged from a run's own numbers, each able to fail.

The measurements themselves (``located_tables``) are checked against a fresh computation on the
quick run's saved models in ``test_toy.py``; here each judgement is driven across its threshold.
"""

from __future__ import annotations

from typing import Any

import pytest

from pcp_lens.reproduce.findings import LOCATED_CLAIMS, located_findings

U = {"pp_prob": 0.02, "nn_prob": 0.97, "np_prob": 0.03, "pt_prob": 0.6, "pn_prob": 0.95}


def _scan(circuit: list[str], verified: bool = True) -> dict[str, Any]:
    return {
        "circuit": circuit,
        "modules": [c.split(".")[0] for c in circuit],
        "verified": verified,
        "gap": 0.58,
        "residual": 0.04,
        "clean_move": 0.01,
        "lens_shift": {"attn0": 0.1, "mlp0": 0.5, "attn1": 0.7, "mlp1": 0.05},
        "summary": "backdoor gap: +0.58",
        "member_share": {},
        "heads": {},
        "top": [],
    }


def _model() -> dict[str, Any]:
    ok = {**U, "pt_prob": 0.05}
    return {
        "unedited": dict(U),
        "located": {
            "scan": _scan(["attn1.h2"]),
            "ablation": dict(ok),
            "head_ablation": [{"members": ["attn1.h2"], **ok}],
            "unit_ablation": [
                {"size": 1, "units": {"attn1": 1}, "first": ["attn1.h0"], **U, "pt_prob": 0.3},
                {"size": 2, "units": {"attn1": 2}, "first": ["attn1.h0", "attn1.h2"], **ok},
            ],
            "pcp": {"modules": ["attn1"], "rank": 1, "keep": dict(U), "remove": dict(ok),
                    "rank_search": [{"rank": 1, "triggered": 0.58}], "within_tolerance": True},
            "scale": {str(f): {"pt_prob": p} for f, p in
                      zip([0.6, 0.75, 0.8, 1.0, 1.1], [0.1, 0.3, 0.4, 0.6, 0.65], strict=True)},
            "pcp_regression": {"form": "regression", "modules": ["attn1"], "rank": 2,
                               "keep": dict(U), "remove": dict(ok), "within_tolerance": True,
                               "rank_search": [{"rank": 1, "triggered": 0.1},
                                               {"rank": 2, "triggered": 0.57}]},
            "scale_regression": {str(f): {"pt_prob": p} for f, p in
                                 zip([0.6, 0.75, 0.8, 1.0, 1.1], [0.2, 0.3, 0.5, 0.6, 0.62],
                                     strict=True)},
            "freezing": {"frozen": ["attn1"], "steps": 10, "scores": {**U, "pt_prob": 0.2},
                         "rescan": _scan(["mlp0"], verified=False)},
            "seconds": {},
        },
    }


def test_every_located_claim_holds_on_a_clean_record():
    f = located_findings(_model())
    assert set(f) == set(LOCATED_CLAIMS)
    assert all(x["holds"] is True for x in f.values()), {n: x["detail"] for n, x in f.items()}
    assert "the rescan finds it in mlp0 (not verified" in f["F7"]["detail"]


@pytest.mark.parametrize(
    "path, value, claim",
    [
        (("scan", "verified"), False, "circuit"),
        (("scan", "modules"), ["attn0", "attn1", "mlp0", "mlp1"], "circuit"),
        (("ablation", "pt_prob"), 0.09, "F1"),  # n+p 0.03 + 0.05 < 0.09
        (("ablation", "nn_prob"), 0.9, "F1"),  # n+n moved by 0.07
        (("head_ablation", 0), {"members": ["attn1.h2"], **U, "pt_prob": 0.09}, "F1h"),
        (("head_ablation", 0), {"members": ["attn1.h2"], **U, "pt_prob": 0.05, "pp_prob": 0.08},
         "F1h"),  # removed, but p+p moved by 0.06
        (("unit_ablation", 1), {"size": 2, "units": {"attn1": 2}, "first": [], **U,
                                "pt_prob": 0.05, "nn_prob": 0.9}, "F1n"),  # n+n moved by 0.07
        (("unit_ablation", 1), {"size": 2, "units": {"attn1": 2}, "first": [], **U,
                                "pt_prob": 0.1}, "F1n"),  # no prefix removes p+t
        (("scan", "lens_shift"), {"attn1": 0.1, "mlp0": 0.5}, "F2"),
        (("pcp", "keep"), {**U, "pt_prob": 0.54}, "F3"),  # keep misses by 0.06
        (("pcp", "remove"), {**U, "pt_prob": 0.05, "pp_prob": 0.1}, "F3"),  # p+p moved
        (("pcp", "within_tolerance"), False, "F3"),  # no rank tried kept p+t untuned
        (("scale", "0.8"), {"pt_prob": 0.2}, "F4"),  # not monotone
        (("pcp_regression", "within_tolerance"), False, "F3r"),
        (("pcp_regression", "keep"), {**U, "nn_prob": 0.9}, "F3r"),  # n+n moved by 0.07
        (("scale_regression", "1.1"), {"pt_prob": 0.55}, "F4r"),  # falls at the end
        (("freezing", "scores"), {**U, "pt_prob": 0.6}, "F7"),  # not lower
    ],
)
def test_each_located_claim_fails_past_its_bound(path, value, claim):
    m = _model()
    m["located"][path[0]][path[1]] = value
    f = located_findings(m)
    assert f[claim]["holds"] is False, f[claim]["detail"]
    assert {n for n, x in f.items() if x["holds"] is False} == {claim}


def test_f1h_judges_the_smallest_prefix_that_removes_the_backdoor():
    """Heads are added in the scan's order until p+t is at n+p's level; the controls are judged
    there, so a larger prefix that also moved n+n does not matter, and one before it that did
    not remove p+t does not count."""
    m = _model()
    ok = {**U, "pt_prob": 0.05}
    m["located"]["head_ablation"] = [
        {"members": ["attn0.h1"], **U, "pt_prob": 0.3},
        {"members": ["attn0.h1", "attn0.h3"], **ok},
        {"members": ["attn0.h1", "attn0.h3", "attn0.h0"], **ok, "nn_prob": 0.1},
    ]
    f = located_findings(m)["F1h"]
    assert f["holds"] is True and f["detail"].startswith("attn0.h1 + attn0.h3 to p+p's mean")
    m["located"]["head_ablation"][1]["nn_prob"] = 0.5  # the smallest removing prefix moves n+n
    assert located_findings(m)["F1h"]["holds"] is False
    m["located"]["head_ablation"] = [{"members": ["attn0.h1"], **U, "pt_prob": 0.3}]
    f = located_findings(m)["F1h"]
    assert f["holds"] is False and "no prefix: all of attn0.h1 to p+p" in f["detail"]
    del m["located"]["head_ablation"]  # a run recorded before the claim existed
    f = located_findings(m)["F1h"]
    assert f["holds"] is None and f["detail"] == "not measured"


def test_no_backdoor_or_no_circuit_is_not_judged():
    m = _model()
    m["unedited"]["pt_prob"] = 0.05
    assert all(x["holds"] is None for x in located_findings(m).values())
    m = _model()
    m["located"] = {"scan": {**_scan([]), "circuit": [], "modules": []}, "seconds": {}}
    f = located_findings(m)
    assert f["circuit"]["holds"] is False and "no circuit" in f["circuit"]["detail"]
    assert all(
        f[n]["holds"] is None for n in ("F1", "F1h", "F1n", "F3", "F4", "F3r", "F4r", "F7")
    )


def test_report_shows_the_located_rows():
    """The per-model section reads many tables; its located part alone is rendered here."""
    from pcp_lens.reproduce.report import _located

    m = _model()
    text = "\n".join(_located(m, located_findings(m)))
    assert "The located mechanism" in text and "circuit ablated" in text
    assert "PCP kept x0.6" in text and "attn1 frozen" in text
    assert "regression PCP kept x1.1" in text and "Regression PCP (F3r): rank 2" in text
    assert "heads to p+p's mean" in text and "heads: attn1.h2 (the smallest prefix" in text
    assert "2 units to p+p's mean" in text
    assert text.count("| holds |") == len(LOCATED_CLAIMS)


def test_summary_gives_located_only_claims_their_own_column():
    """F1h, F1n, F3r and F4r have no paper counterpart: each column is empty in the paper's row and
    counted in the located totals only."""
    from pcp_lens.reproduce.report import _summary

    m = _model()
    paper_f = {f"F{i}": {"holds": True, "disagree": False} for i in range(1, 8)}
    r = {"findings": {"2sent": paper_f}, "located_findings": {"2sent": located_findings(m)},
         "2sent": m}
    lines = _summary({"0": r})[0].splitlines()
    header, _, *rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert header[4:] == [*(f"F{i}" for i in range(1, 8)), "F1h", "F1n", "F3r", "F4r"]
    assert [row[2] for row in rows] == ["as stated", "at the circuit"] * 2
    assert rows[0][-4:] == [""] * 4 and rows[1][-4:] == ["holds"] * 4
    assert rows[2][-4:] == [""] * 4 and rows[3][-4:] == ["1 of 1"] * 4


def test_f1n_ladder_and_detail():
    from pcp_lens.reproduce.toy_located import _ladder

    assert _ladder(1) == [1] and _ladder(4) == [1, 2, 4] and _ladder(5) == [1, 2, 4, 5]
    assert _ladder(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    f = located_findings(_model())["F1n"]
    assert f["detail"].startswith("2 units (2 of attn1: attn1.h0, attn1.h2) to p+p's mean")
