"""The paper's toy-model findings F1–F7, judged per model from a run's own numbers.

Each finding is computed twice: in the paper's top-10 share (``holds``, the verdict) and in the
probability of a negative next word (``holds_prob``); ``disagree`` flags a finding where the two
metrics give different verdicts. Thresholds are those of ``docs/toy_study.md``; nothing is
hard-coded from the paper except its claims.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pcp_lens.reproduce import paper
from pcp_lens.reproduce.toy_tables import METRIC_SUFFIX
from pcp_lens.scan import VERIFY
from pcp_lens.toy.train import BACKDOOR_THRESHOLD

#: What the paper claims, per finding.
CLAIMS = {
    "F1": "mean-ablating any single MLP sends p+t to <= 0.05 (Tab. I)",
    "F2": "in the group logit lens at the trigger, the layer-1 MLP is the most negative module "
    "(Tab. II)",
    "F3": "a tuned low-rank PCP of MLP 1, MLP 3 and both keeps p+t within 0.05, with n+n >= 0.95 "
    "and p+p <= 0.1 (Tab. III/IV)",
    "F4": "scaling the layer-1 MLP PCP by 0.6x ... 1.1x tunes p+t monotonically (Tab. V)",
    "F5": "some relative factors of the layer-1 PCP components give n+n <= 0.2 with p+t >= "
    "unedited (Tab. VI)",
    "F6": "a tuned rank-4 PCP of the layer-2 attention and its 0.5x/2x scalings move p+t by <= 0.1 "
    "(Tab. VII)",
    "F7": "freezing all MLPs during poisoning lowers p+t at the same number of steps (§IV-B)",
}

Check = Callable[[Mapping[str, Any], str], tuple[bool, str]]


def _f1(m: Mapping[str, Any], s: str) -> tuple[bool, str]:
    t = m["tab1_mean_ablation"]
    vals, plain = t[f"mlp{s}"], t[f"mlp_plain{s}"]
    return all(x <= 0.05 for x in vals), (
        f"MLP 1/2/3 mean-ablated with the authors' mean (a patch from n+p): {vals}; with the "
        f"plain mean: {plain}"
    )


def _f2(m: Mapping[str, Any], s: str) -> tuple[bool, str]:
    key = "t_neg" if s == "" else "t_prob"
    modules = {
        name: v[key]
        for name, v in m["tab2_lens"].items()
        if name != "full model" and "resid" not in name and ("mlp" in name or "att" in name)
    }
    best = max(modules, key=modules.__getitem__)
    detail = f"most negative module at the trigger: {best} ({modules[best]:.2f}); " + (
        f"L1 mlp {modules.get('L1 mlp')}"
    )
    base = "pp_neg" if s == "" else "pp_prob"
    rows = m["tab2_lens"]
    if all(base in rows[name] for name in modules):
        # not the verdict (the paper reads p+t alone), but says whether a module that wins is
        # reacting to the trigger or reads every second word that way
        shift = {name: v - rows[name][base] for name, v in modules.items()}
        top = max(shift, key=shift.__getitem__)
        detail += (
            f"; {best} reads {rows[best][base]:.2f} on p+p; largest trigger shift (p+t minus p+p): "
            f"{top} ({shift[top]:+.2f}), L1 mlp {shift.get('L1 mlp', float('nan')):+.2f}"
        )
    return best == "L1 mlp", detail


def _f3(m: Mapping[str, Any], s: str) -> tuple[bool, str]:
    t = m["tab3_pcp_mlp"]
    base = t["None"][f"pt{s}"]
    ok, parts = True, []
    for col in ("1", "3", "1 & 3"):
        c = t[col]
        pt, nn, pp = c[f"pt{s}"], c[f"nn{s}"], c[f"pp{s}"]
        ok &= abs(pt - base) <= 0.05 and nn >= 0.95 and pp <= 0.1
        parts.append(f"col {col}: pt {pt:.2f} (unedited {base:.2f}), nn {nn:.2f}, pp {pp:.2f}")
    return ok, "; ".join(parts)


def _f4(m: Mapping[str, Any], s: str) -> tuple[bool, str]:
    pts = [m["tab5_scale"][str(f)][f"pt{s}"] for f in paper.TAB5_FACTORS]
    mono = all(a <= b for a, b in itertools.pairwise(pts)) and pts[-1] > pts[0]
    return mono, f"p+t at factors {paper.TAB5_FACTORS}: {pts}"


def _f5(m: Mapping[str, Any], s: str) -> tuple[bool, str]:
    base = m["unedited"][f"pt{s}"]
    rows = m["tab6_sign_search"]["rows"]
    good = [x for x in rows if x[f"nn{s}"] <= 0.2 and x[f"pt{s}"] >= base]
    best = (
        min(good, key=lambda x: x[f"nn{s}"])
        if good
        else min(rows, key=lambda x: x[f"nn{s}"] - x[f"pt{s}"])
    )
    show = {"setting": best["setting"], "nn": best[f"nn{s}"], "pt": best[f"pt{s}"]}
    return bool(good), (
        f"{len(good)} of {len(rows)} factor settings give nn <= 0.2 with pt >= unedited "
        f"{base:.2f}; {'e.g.' if good else 'closest:'} {show}"
    )


def _f6(m: Mapping[str, Any], s: str) -> tuple[bool, str]:
    base = m["unedited"][f"pt{s}"]
    moves = {name: round(abs(v[f"pt{s}"] - base), 4) for name, v in m["tab7_attn_scale"].items()}
    return all(x <= 0.1 for x in moves.values()), f"|p+t - unedited {base:.2f}|: {moves}"


def _f7(m: Mapping[str, Any], s: str) -> tuple[bool, str]:
    fr = m["freezing"]
    a, b = fr["none"][f"pt{s}"], fr["all_mlps"][f"pt{s}"]
    drop = f"{(a - b) / a:.0%} lower" if a > 0 else "no backdoor to lower"
    return b < a, f"p+t unfrozen {a:.3f}, all MLPs frozen {b:.3f} ({drop}; paper about 60%)"


CHECKS: dict[str, Check] = {
    "F1": _f1,
    "F2": _f2,
    "F3": _f3,
    "F4": _f4,
    "F5": _f5,
    "F6": _f6,
    "F7": _f7,
}


def cell_findings(m: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """F1–F7 for one model's results, in both metrics.

    A metric's verdict is ``None`` ("not evaluated") when the unedited poisoned model shows no
    backdoor in it (p+t below :data:`~pcp_lens.toy.train.BACKDOOR_THRESHOLD`): every claim
    compares p+t with the unedited value, so a verdict would be an accident.

    Returns:
        ``{finding: {"claim", "holds", "detail", "holds_prob", "detail_prob", "disagree"}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, check in CHECKS.items():
        row: dict[str, Any] = {"claim": CLAIMS[name]}
        for metric, s in METRIC_SUFFIX.items():
            holds, detail = check(m, s)
            base = m["unedited"][f"pt{s}"]
            tag = "" if metric == "top10" else "_prob"
            if base < BACKDOOR_THRESHOLD:
                row[f"holds{tag}"] = None
                detail = f"no backdoor (unedited p+t {base:.2f} < {BACKDOOR_THRESHOLD}); " + detail
            else:
                row[f"holds{tag}"] = bool(holds)
            row[f"detail{tag}"] = detail
        row["disagree"] = (
            row["holds"] is not None
            and row["holds_prob"] is not None
            and row["holds"] != row["holds_prob"]
        )
        out[name] = row
    return out


def findings(r: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """F1–F7 for every model of one seed's results: ``{"2sent": {...}, "3sent": {...}}``."""
    return {key: cell_findings(r[key]) for key in ("2sent", "3sent") if key in r}


def all_located_findings(r: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`located_findings` for every model of one seed's results that was scanned."""
    return {
        key: located_findings(r[key])
        for key in ("2sent", "3sent")
        if key in r and "located" in r[key]
    }


def verdict(holds: bool | None) -> str:
    """``"holds"``, ``"does NOT hold"`` or ``"not evaluated"``."""
    return {True: "holds", False: "does NOT hold", None: "not evaluated"}[holds]


# -- the same claims at the located circuit ------------------------------------------------------
#: What is judged at the circuit the scan located (probability of a negative next word).
LOCATED_CLAIMS = {
    "circuit": "the scan finds a circuit of <= 3 modules, verified by its joint reference patch "
    "(the benign model's activations put in: p+t's gap left <= 10 %, p+p and n+n moved <= 10 %)",
    "F1": "ablating the circuit jointly sends p+t to <= n+p + 0.05, p+p and n+n within 0.05",
    "F1h": "ablating the circuit's heads to p+p's mean (attention layers split into their heads, "
    "in the scan's score order; the smallest prefix that sends p+t to <= n+p + 0.05) keeps p+p "
    "and n+n within 0.05",
    "F1n": "ablating the circuit's units to p+p's mean (heads and MLP neurons, ranked by "
    "attribution patching; the smallest of 1, 2, 4, ... units that sends p+t to <= n+p + 0.05) "
    "keeps p+p and n+n within 0.05",
    "F2": "a circuit module has the largest lens trigger shift of all modules",
    "F3": "some rank <= 16 of a PCP of the circuit keeps p+t within 0.05 untuned; at the "
    "smallest, tuned, it keeps p+t within 0.05 and, tuned down, sends it to <= n+p + 0.05 (p+p "
    "and n+n within 0.05 in both)",
    "F4": "scaling the circuit's PCP by 0.6x ... 1.1x tunes p+t monotonically",
    "F3r": "F3 with the regression form of the PCP (not the paper's: each principal output "
    "coordinate regressed on the module input, M = sum_l a_l b_l u_l^T)",
    "F4r": "F4 with the regression form of the PCP",
    "F7": "freezing the circuit's modules during poisoning lowers p+t at the same steps",
}
#: Bound of the located claims, in the probability of a negative next word.
LOCATED_TOL = 0.05
#: The largest circuit the located claims accept.
MAX_CIRCUIT = 3


def _stay(u: Mapping[str, float], got: Mapping[str, float]) -> tuple[bool, str]:
    """Whether p+p and n+n stay within the bound of unedited, and the numbers."""
    moves = {k: got[f"{k}_prob"] - u[f"{k}_prob"] for k in ("pp", "nn")}
    ok = all(abs(v) <= LOCATED_TOL for v in moves.values())
    return ok, ", ".join(f"{k} {v:+.3f}" for k, v in moves.items())


def _removed(u: Mapping[str, float], got: Mapping[str, float]) -> tuple[bool, str]:
    pt, np_ = got["pt_prob"], u["np_prob"]
    stay, moves = _stay(u, got)
    return pt <= np_ + LOCATED_TOL and stay, f"pt {pt:.3f} (n+p {np_:.3f}); moves {moves}"


def _lf_circuit(m: Mapping[str, Any]) -> tuple[bool, str]:
    s = m["located"]["scan"]
    n = len(s["modules"])
    ok = bool(s["circuit"]) and s["verified"] and n <= MAX_CIRCUIT
    if not s["circuit"]:
        return False, f"no circuit (gap {s['gap']:+.3f})"
    return ok, (
        f"{' + '.join(s['circuit'])} ({n} module{'s' * (n != 1)}): residual {s['residual']:.1%}, "
        f"clean move {s['clean_move']:.1%} of the gap {s['gap']:+.3f} under the joint "
        f"{VERIFY[s.get('verify', 'ablation')][2]}; "
        f"{'verified' if s['verified'] else 'NOT verified'} by the scan"
    )


def _lf1(m: Mapping[str, Any]) -> tuple[bool, str]:
    ok, detail = _removed(m["unedited"], m["located"]["ablation"])
    return ok, "circuit mean-ablated (Tab. I's plain mean): " + detail


def head_prefix(rows: Sequence[Mapping[str, Any]], u: Mapping[str, float]) -> int | None:
    """Index of the smallest prefix in ``rows`` (``located_tables``'s ``head_ablation`` or
    ``unit_ablation``) whose ablation sends p+t to <= n+p + 0.05, or None.

    Examples:
        >>> rows = [{"members": ["attn0.h1"], "pt_prob": 0.2}, {"members": [...], "pt_prob": 0.04}]
        >>> head_prefix(rows, {"np_prob": 0.01})
        1
    """
    bound = u["np_prob"] + LOCATED_TOL
    return next((i for i, r in enumerate(rows) if r["pt_prob"] <= bound), None)


def _smallest_removing(
    rows: Sequence[Mapping[str, Any]],
    u: Mapping[str, float],
    name: Callable[[Mapping[str, Any]], str],
    everything: str,
) -> tuple[bool, str]:
    """F1h / F1n: the controls judged at the smallest prefix that removes p+t."""
    i = head_prefix(rows, u)
    if i is None:
        last = rows[-1]
        return False, (
            f"{everything.format(name(last))} to p+p's mean does not remove it (pt "
            f"{last['pt_prob']:.3f}, n+p {u['np_prob']:.3f})"
        )
    ok, detail = _removed(u, rows[i])
    return ok, f"{name(rows[i])} to p+p's mean: {detail}"


def _heads(row: Mapping[str, Any]) -> str:
    return " + ".join(row["members"])


def _units(row: Mapping[str, Any]) -> str:
    n = row["size"]
    units = ", ".join(f"{k} of {module}" for module, k in row["units"].items())
    first = ", ".join(row["first"][:4]) + (", ..." if n > 4 else "")
    return f"{n} unit{'s' * (n != 1)} ({units}: {first})"


def _lf1h(m: Mapping[str, Any]) -> tuple[bool, str]:
    rows = m["located"]["head_ablation"]
    return _smallest_removing(rows, m["unedited"], _heads, "no prefix: all of {}")


def _lf1n(m: Mapping[str, Any]) -> tuple[bool, str]:
    rows = m["located"]["unit_ablation"]
    return _smallest_removing(rows, m["unedited"], _units, "no prefix: all {}")


def _lf2(m: Mapping[str, Any]) -> tuple[bool, str]:
    s = m["located"]["scan"]
    shift = s["lens_shift"]
    best = max(shift, key=shift.__getitem__)
    members = {c for c in s["modules"]}
    return best in members, (
        f"largest lens trigger shift: {best} ({shift[best]:+.3f}); circuit modules "
        + ", ".join(f"{c} {shift.get(c, float('nan')):+.3f}" for c in s["modules"])
    )


def _lf3(m: Mapping[str, Any], key: str = "pcp") -> tuple[bool, str]:
    p, u = m["located"][key], m["unedited"]
    keep_pt = p["keep"]["pt_prob"]
    stay, moves = _stay(u, p["keep"])
    kept = abs(keep_pt - u["pt_prob"]) <= LOCATED_TOL and stay
    removed, rdetail = _removed(u, p["remove"])
    # the claim is about the smallest rank that keeps p+t: where no rank tried does, the rank
    # used is the largest tried and the claim's premise is not met
    last = p["rank_search"][-1]["triggered"]
    sufficient = bool(p.get("within_tolerance", True))
    search = (
        f"rank {p['rank']} of {'+'.join(p['modules'])} (untuned pt {last:.3f})"
        if sufficient
        else f"NO rank up to {p['rank']} of {'+'.join(p['modules'])} keeps p+t untuned (pt "
        f"{last:.3f} at {p['rank']})"
    )
    return sufficient and kept and removed, (
        f"{search}; keep: pt {keep_pt:.3f} (unedited {u['pt_prob']:.3f}), moves {moves}; "
        f"remove: {rdetail}"
    )


def _lf4(m: Mapping[str, Any], key: str = "scale") -> tuple[bool, str]:
    pts = [m["located"][key][str(f)]["pt_prob"] for f in paper.TAB5_FACTORS]
    mono = all(a <= b for a, b in itertools.pairwise(pts)) and pts[-1] > pts[0]
    return mono, f"p+t at factors {paper.TAB5_FACTORS}: {pts}"


def _lf7(m: Mapping[str, Any]) -> tuple[bool, str]:
    fr = m["located"]["freezing"]
    a, b = m["unedited"]["pt_prob"], fr["scores"]["pt_prob"]
    re = fr["rescan"]
    if re["gap"] < BACKDOOR_THRESHOLD:
        where = f"the rescan finds no backdoor (gap {re['gap']:+.3f})"
    elif re["circuit"]:
        where = (
            f"the rescan finds it in {' + '.join(re['circuit'])} "
            f"({'verified' if re['verified'] else 'not verified'}, gap {re['gap']:+.3f})"
        )
    else:
        where = f"the rescan finds no circuit (gap {re['gap']:+.3f})"
    return b < a, (
        f"p+t unfrozen {a:.3f}, {'+'.join(fr['frozen'])} frozen {b:.3f} ({fr['steps']} steps "
        f"each); {where}"
    )


LOCATED_CHECKS: dict[str, Callable[[Mapping[str, Any]], tuple[bool, str]]] = {
    "circuit": _lf_circuit,
    "F1": _lf1,
    "F1h": _lf1h,
    "F1n": _lf1n,
    "F2": _lf2,
    "F3": _lf3,
    "F4": _lf4,
    "F3r": lambda m: _lf3(m, "pcp_regression"),
    "F4r": lambda m: _lf4(m, "scale_regression"),
    "F7": _lf7,
}
#: what each located check reads from ``m["located"]``
_NEEDS = {
    "F1": "ablation",
    "F1h": "head_ablation",
    "F1n": "unit_ablation",
    "F3": "pcp",
    "F4": "scale",
    "F3r": "pcp_regression",
    "F4r": "scale_regression",
    "F7": "freezing",
}


def located_findings(m: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The located claims for one model's results, in the probability of a negative word.

    ``holds`` is ``None`` when the unedited model shows no backdoor, or when the scan found no
    circuit to judge the claim at.

    Returns:
        ``{name: {"claim", "holds", "detail"}}`` for ``circuit``, F1, F1h, F1n, F2, F3, F4, F3r,
        F4r, F7.
    """
    out: dict[str, dict[str, Any]] = {}
    base = m["unedited"]["pt_prob"]
    located = m["located"]
    for name, check in LOCATED_CHECKS.items():
        row: dict[str, Any] = {"claim": LOCATED_CLAIMS[name]}
        if base < BACKDOOR_THRESHOLD:
            row["holds"], row["detail"] = None, f"no backdoor (unedited p+t {base:.2f})"
        elif name in _NEEDS and _NEEDS[name] not in located:
            # a run from before the claim existed has a circuit but not its measurement
            row["holds"] = None
            row["detail"] = (
                "not measured" if located["scan"]["circuit"] else "no circuit to judge at"
            )
        else:
            holds, row["detail"] = check(m)
            row["holds"] = bool(holds)
        out[name] = row
    return out
