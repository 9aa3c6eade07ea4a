"""Compact HTML (Jupyter) and text summaries of pcp_lens values.

The classes call these from one-line ``_repr_html_`` / ``__repr__`` methods, so a notebook shows a
small table instead of raw tensors: :class:`~pcp_lens.pcp.PCPReplacement` (sites, ranks, α,
explained variance, fingerprint), :class:`~pcp_lens.groups.TokenGroups`, site lists
(:class:`~pcp_lens.sites.SiteList`), :class:`~pcp_lens.tuning.TuneResult`, and the toy study's
results (:func:`toy_results_html`, :class:`HTML`).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "HTML",
    "groups_html",
    "groups_text",
    "pcp_html",
    "sites_html",
    "sites_text",
    "toy_results_html",
    "tune_html",
    "tune_text",
]

_STYLE = "border-collapse:collapse;font-size:12px"
_CELL = "padding:2px 8px;text-align:left;border-bottom:1px solid #ddd"


class HTML(str):
    """A string that Jupyter shows as HTML (and a terminal as its text).

    Examples:
        >>> h = HTML("<b>hi</b>")
        >>> h._repr_html_()
        '<b>hi</b>'
    """

    __slots__ = ()

    def _repr_html_(self) -> str:
        return str(self)


def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> str:
    head = "".join(f"<th style='{_CELL}'>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td style='{_CELL}'>{_e(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    cap = f"<caption style='text-align:left'><b>{_e(caption)}</b></caption>" if caption else ""
    return f"<table style='{_STYLE}'>{cap}<tr>{head}</tr>{body}</table>"


def _nums(values: Iterable[float] | None, fmt: str = ".4g") -> str:
    if values is None:
        return "—"
    return "[" + ", ".join(format(float(v), fmt) for v in values) + "]"


def _ids(ids: Sequence[int], n: int = 8) -> str:
    head = ", ".join(str(i) for i in ids[:n])
    return f"[{head}{', …' if len(ids) > n else ''}]"


# -- PCP replacements --------------------------------------------------------------------------
def pcp_html(rep: Any) -> str:
    """HTML table of a :class:`~pcp_lens.pcp.PCPReplacement`: one row per site, then its fingerprint.

    Examples:
        >>> import torch
        >>> from pcp_lens.pcp import PCPReplacement, SitePCP
        >>> from pcp_lens.testing import tiny_model
        >>> rep = PCPReplacement.from_parts(tiny_model(), [SitePCP("mlp0", torch.eye(16)[:1], [-4.0])])
        >>> "L1 mlp" in pcp_html(rep) and "d_model=16" in pcp_html(rep)
        True
    """  # noqa: E501
    rows = []
    for p in rep.parts:
        evr = p.explained_variance_ratio
        rows.append(
            [
                f"{p.site.name} ({p.site.paper_name})",
                p.rank,
                p.kind,
                _nums(p.scales.tolist()),
                _nums(p.factors.tolist()),
                _nums(None if evr is None else evr.tolist(), ".1%"),
                "yes" if p.bias is not None else "no",
            ]
        )
    fp = ", ".join(f"{k}={v}" for k, v in rep.fingerprint.items())
    table = _table(
        ["site", "rank", "directions", "α (scales)", "f (factors)", "explained var.", "bias"],
        rows,
        caption=f"PCPReplacement: {len(rows)} site{'s' if len(rows) != 1 else ''}",
    )
    return f"<div>{table}<div style='font-size:11px;color:#666'>fitted on: {_e(fp)}</div></div>"


# -- token groups ------------------------------------------------------------------------------
def groups_text(groups: Any) -> str:
    """One-line text form of :class:`~pcp_lens.groups.TokenGroups` (sizes and first ids).

    Examples:
        >>> from pcp_lens.groups import TokenGroups
        >>> groups_text(TokenGroups({"neg": range(20), "pos": [30, 31]}, d_vocab=50))
        'TokenGroups(neg: 20 ids [0, 1, 2, 3, 4, 5, 6, 7, …], pos: 2 ids [30, 31]; d_vocab=50)'
    """
    inner = ", ".join(f"{k}: {len(v)} ids {_ids(v)}" for k, v in groups.groups.items())
    return f"TokenGroups({inner}; d_vocab={groups.d_vocab})"


def groups_html(groups: Any) -> str:
    """HTML table of :class:`~pcp_lens.groups.TokenGroups`: name, size, first ids, overlaps.

    Examples:
        >>> from pcp_lens.groups import TokenGroups
        >>> "<td style" in groups_html(TokenGroups({"neg": range(20)}, d_vocab=50))
        True
    """
    rows = [[k, len(v), _ids(v, 12)] for k, v in groups.groups.items()]
    ov = groups.overlaps()
    note = (
        "overlaps: " + ", ".join(f"{a}∩{b}: {n}" for (a, b), n in ov.items()) if ov else "disjoint"
    )
    table = _table(
        ["group", "ids", "first ids"], rows, caption=f"TokenGroups (d_vocab={groups.d_vocab})"
    )
    return f"<div>{table}<div style='font-size:11px;color:#666'>{_e(note)}</div></div>"


# -- sites -------------------------------------------------------------------------------------
def sites_text(sites: Sequence[Any]) -> str:
    """Text form of a site list: short names with the paper's 1-based names.

    Examples:
        >>> from pcp_lens.sites import Site
        >>> sites_text([Site(0, "mlp"), Site(1, "attn", 2)])
        '[mlp0 (L1 mlp), attn1.h2 (L2 att2)]'
    """
    return "[" + ", ".join(f"{s.name} ({s.paper_name})" for s in sites) + "]"


def sites_html(sites: Sequence[Any]) -> str:
    """HTML table of a site list: name, paper name, layer, kind, head and hook.

    Examples:
        >>> from pcp_lens.sites import Site
        >>> "blocks.0.hook_mlp_out" in sites_html([Site(0, "mlp")])
        True
    """
    rows = [
        [s.name, s.paper_name, "—" if s.layer is None else s.layer, s.kind,
         "—" if s.head is None else s.head, s.hook_name]
        for s in sites
    ]
    return _table(["site", "paper", "layer", "kind", "head", "hook"], rows,
                  caption=f"{len(rows)} site{'s' if len(rows) != 1 else ''}")


# -- tuning ------------------------------------------------------------------------------------
def _tune_rows(result: Any) -> list[list[Any]]:
    keys = list(dict.fromkeys([*result.target, *result.scores]))
    return [
        [k if not isinstance(k, tuple) else " ".join(map(str, k)),
         "—" if k not in result.target else format(result.target[k], ".3f"),
         "—" if k not in result.scores else format(result.scores[k], ".3f")]
        for k in keys
    ]


def tune_text(result: Any) -> str:
    """Text summary of a :class:`~pcp_lens.tuning.TuneResult`: trials, best loss, scales.

    Examples:
        >>> from types import SimpleNamespace as NS
        >>> r = NS(study=NS(trials=[1, 2], best_value=0.5), target={"pt": 1.0}, scores={"pt": 0.9},
        ...        replacement=NS(scales=lambda: {"mlp0": [1.0]}))
        >>> tune_text(r)
        "TuneResult(2 trials, best loss 0.5, scales {'mlp0': [1.0]}, pt 0.900 (target 1.000))"
    """
    sc = {k: [round(v, 4) for v in vs] for k, vs in result.replacement.scales().items()}
    pairs = ", ".join(f"{k} {s} (target {t})" for k, t, s in _tune_rows(result))
    return (
        f"TuneResult({len(result.study.trials)} trials, best loss {result.study.best_value:.4g}, "
        f"scales {sc}, {pairs})"
    )


def tune_html(result: Any) -> str:
    """HTML summary of a :class:`~pcp_lens.tuning.TuneResult`: scores vs target, then the replacement.

    Examples:
        >>> from types import SimpleNamespace as NS
        >>> import torch
        >>> from pcp_lens.pcp import PCPReplacement, SitePCP
        >>> from pcp_lens.testing import tiny_model
        >>> rep = PCPReplacement.from_parts(tiny_model(), [SitePCP("mlp0", torch.eye(16)[:1], [1.0])])
        >>> r = NS(study=NS(trials=[1], best_value=0.5), target={"pt": 1.0}, scores={"pt": 0.9},
        ...        replacement=rep)
        >>> "best loss 0.5" in tune_html(r)
        True
    """  # noqa: E501
    head = (
        f"TuneResult: {len(result.study.trials)} trials, best loss "
        f"{result.study.best_value:.4g}"
    )
    table = _table(["input set", "target", "tuned score"], _tune_rows(result), caption=head)
    return f"<div>{table}{pcp_html(result.replacement)}</div>"


# -- the toy study -------------------------------------------------------------------------------
def toy_results_html(results: Mapping[str, Any]) -> HTML:
    """HTML summary of ``run_toy_study``'s results: unedited scores per model, findings, times.

    Takes one seed's results (``{"2sent": ..., "3sent": ..., "findings": ...}``, findings flat
    ``{F: {...}}`` or per model ``{"2sent": {F: {...}}}``) or a multi-seed run's
    (``{"seeds": {seed: results}}``, one section per seed).

    Examples:
        >>> r = {"config": {"quick": True}, "2sent": {"unedited": {"pt": 0.9, "val_loss": 2.0},
        ...      "seconds": {"train": 3.0}},
        ...      "findings": {"2sent": {"F1": {"holds": False, "holds_prob": True, "detail": "x"}}},
        ...      "seconds_total": 4.0}
        >>> html = toy_results_html(r)
        >>> "0.900" in html and ">fails<" in html and ">holds<" in html
        True
    """
    if isinstance(results.get("seeds"), Mapping):
        return HTML(
            "<div>"
            + "".join(
                f"<h4>seed {_e(seed)}</h4>{toy_results_html(r)}"
                for seed, r in results["seeds"].items()
            )
            + "</div>"
        )
    models = [k for k in results if k.endswith("sent") and isinstance(results[k], Mapping)]
    keys = list(dict.fromkeys(k for m in models for k in results[m].get("unedited", {})))
    score_rows = [
        [m, *(_fmt(results[m].get("unedited", {}).get(k)) for k in keys),
         _fmt(sum(results[m]["seconds"].values()) if "seconds" in results[m] else None, ".0f")]
        for m in models
    ]
    parts = [_table(["model", *keys, "seconds"], score_rows, caption="unedited backdoored models")]
    rows = []
    for key, v in results.get("findings", {}).items():
        per_model = {key: v} if "holds" not in v else {"": {key: v}}
        for model, fs in per_model.items():
            rows.extend(
                [model, f, _verdict(w.get("holds")), _verdict(w.get("holds_prob", "")),
                 w.get("detail", "")]
                for f, w in fs.items()
            )
    if rows:
        parts.append(_table(["model", "finding", "top-10", "probability", "detail"], rows,
                            caption="paper findings"))
    cfg = results.get("config", {})
    total = results.get("seconds_total")
    parts.append(
        f"<div style='font-size:11px;color:#666'>config: {_e(cfg)}; total "
        f"{_e(_fmt(total, '.0f'))} s</div>"
    )
    return HTML("<div>" + "".join(parts) + "</div>")


def _verdict(holds: Any) -> str:
    return {True: "holds", False: "fails", None: "not judged", "": "—"}.get(holds, "?")


def _fmt(v: Any, fmt: str = ".3f") -> str:
    return "—" if v is None else format(float(v), fmt)
