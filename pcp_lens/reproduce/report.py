"""``report.md`` of the toy study: every table with our numbers beside the paper's.

Each table shows the paper's metric (top-10 share of negative words) beside the paper's numbers,
and the probability of a negative next word beside it; findings are judged per model in both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pcp_lens.reproduce import paper
from pcp_lens.reproduce.findings import head_prefix, verdict
from pcp_lens.reproduce.markdown import fmt as _f
from pcp_lens.reproduce.markdown import table as _table

PROB = "probability of a negative next word"


def _columns(
    cols: Mapping[str, Mapping[str, Any]],
    ref: Mapping[str, Sequence[float]] | None,
    keys: Sequence[str],
) -> str:
    """Top-10 rows beside the paper's, then the probability rows (``<key>_prob``)."""
    names = list(cols)
    header = ["inputs", *[f"{n} (ours)" for n in names]]
    if ref is not None:
        header += [f"{n} (paper)" for n in names]
    rows = []
    for k in [*keys, "val_loss"]:
        row: list[Any] = [k.replace("val_loss", "Val. loss")]
        row += [cols[n].get(k, "") for n in names]
        if ref is not None:
            row += list(ref.get(k, [""] * len(names)))[: len(names)]
        rows.append(row)
    for k in keys:
        if any(f"{k}_prob" in cols[n] for n in names):
            row = [f"{k} (prob.)", *[cols[n].get(f"{k}_prob", "") for n in names]]
            rows.append(row + ([""] * len(names) if ref is not None else []))
    return _table(header, rows)


def _findings(f: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = []
    for name, x in f.items():
        flag = " (metrics disagree)" if x["disagree"] else ""
        rows.append(
            [name, x["claim"], verdict(x["holds"]) + flag, verdict(x["holds_prob"]), x["detail"]]
        )
    head = ["finding", "paper's claim", "top-10 (paper's metric)", "neg. probability", "ours"]
    out = [_table(head, rows), ""]
    notes = [
        f"- {name}, in the probability: {x['detail_prob']}"
        for name, x in f.items()
        if x["disagree"] or x["holds_prob"] is False
    ]
    return out + notes


def _intro(r: Mapping[str, Any]) -> list[str]:
    cfg = r["config"]
    return [
        f"Run: {'quick' if cfg['quick'] else 'full'}, {cfg.get('schedule', 'fast')} training "
        f"schedule, seed {cfg['seed']} (data, initialisation, data order and tuner), trigger "
        f"{cfg.get('trigger', 'love')!r}, sentiment switches in {cfg.get('switch_prob', 0.0):.0%} "
        f"of the non-poisoned training sequences, {r.get('seconds_total', '?')} s in total, "
        f"torch {r.get('torch')}.",
        "",
        "Metrics: *top-10* = share of negative words among the 10 likeliest next words (the "
        f"paper's); *prob.* = {PROB}. Both at the last position, mean over the "
        f"{cfg['n_eval']} held-out two-word inputs per combination. Paper layers are 1-based. "
        "Validation losses in the tables are on the poisoned test split without switched "
        "sequences, comparable with the paper's 5.46 / 5.50.",
    ]


def _located(m: Mapping[str, Any], found: Mapping[str, Mapping[str, Any]] | None) -> list[str]:
    """The scan's circuit, its top rows and the claims judged there."""
    loc = m.get("located")
    if loc is None:
        return []
    s = loc["scan"]
    out = ["", "### The located mechanism (backdoor scan)", "", "```", s["summary"], "```", ""]
    if found:
        rows = [[n, x["claim"], verdict(x["holds"]), x["detail"]] for n, x in found.items()]
        out += [_table(["finding", "claim at the circuit", "verdict", "ours"], rows), ""]
    keys = [x for x in ("pp", "nn", "ss", "pn", "np", "pt", "st") if x in m["unedited"]]
    if "ablation" in loc:
        cols = {"unedited": m["unedited"], "circuit ablated": loc["ablation"]}
        heads = loc.get("head_ablation")
        chosen = None
        if heads:
            i = head_prefix(heads, m["unedited"])
            chosen = heads[len(heads) - 1 if i is None else i]
            cols["heads to p+p's mean"] = chosen
        units = loc.get("unit_ablation")
        if units:
            i = head_prefix(units, m["unedited"])
            row = units[len(units) - 1 if i is None else i]
            cols[f"{row['size']} units to p+p's mean"] = row
        for key, name in (("", "PCP"), ("_regression", "regression PCP")):
            if f"pcp{key}" in loc:
                cols[f"{name} kept"] = loc[f"pcp{key}"]["keep"]
                cols[f"{name} removed"] = loc[f"pcp{key}"]["remove"]
            cols.update({f"{name} kept x{f}": v for f, v in loc.get(f"scale{key}", {}).items()})
        if "freezing" in loc:
            cols[f"poisoned, {'+'.join(loc['freezing']['frozen'])} frozen"] = loc["freezing"][
                "scores"
            ]
        out += [_columns(cols, None, keys), ""]
        out.append(
            "Ablation: Tab. I's plain mean over pp, nn, pn, np at the last position"
            + (
                f"; heads: {' + '.join(chosen['members'])} (the smallest prefix of the "
                "circuit's heads in score order that removes p+t, or all of them) to the mean "
                "over p+p at the last position"
                if chosen
                else ""
            )
            + ". PCP: rank "
            f"{loc['pcp']['rank']} (the smallest keeping p+t within 0.05 before tuning; search "
            f"{[(r['rank'], r['triggered']) for r in loc['pcp']['rank_search']]}), tuned to keep "
            "and to remove the backdoor."
            + (
                f" Regression PCP (F3r): rank {loc['pcp_regression']['rank']} (search "
                f"{[(r['rank'], r['triggered']) for r in loc['pcp_regression']['rank_search']]})."
                if "pcp_regression" in loc
                else ""
            )
            if "pcp" in loc
            else ""
        )
    if "freezing" in loc:
        out += ["", "Rescan of the model poisoned with the circuit frozen:", "", "```"]
        out += [loc["freezing"]["rescan"]["summary"], "```"]
    out.append(f"\nSeconds: {loc['seconds']}")
    return out


def _model_section(
    k: int,
    m: Mapping[str, Any],
    findings: Mapping[str, Any],
    located: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    ref3, ref13 = (paper.TAB3, paper.TAB13) if k == 2 else (paper.TAB4, paper.TAB14)
    keys = [x for x in ("pp", "nn", "ss", "pn", "np", "pt", "st") if x in m["unedited"]]
    out = ["", f"## {k}-sentiment model", "", "### Findings", ""]
    out += _findings(findings)
    out += _located(m, located)
    tr = m["training"]
    out.append("")
    if tr.get("reused_checkpoints"):
        out.append("Models reloaded from checkpoints in `models/`.")
    else:
        out.append(
            f"Training: benign {tr['benign_seconds']} s, poisoning {tr['poison_seconds']} s; "
            f"validation loss (own test split, switches included) benign "
            f"{tr['benign_history']['val_loss']}, poisoned {tr['poison_history']['val_loss']}."
        )
    u = m["unedited"]
    out += [
        "",
        "Unedited scores, top-10: " + ", ".join(f"{a} {_f(u[a])}" for a in u if "_" not in a),
        "",
        "Unedited scores, prob.: "
        + ", ".join(f"{a[:-5]} {_f(u[a])}" for a in u if a.endswith("_prob"))
        + f"; validation loss {_f(u['val_loss'])}",
    ]
    if "reading" in m:
        parts = [
            f"{name}: " + ", ".join(f"{a} {_f(b)}" for a, b in prof.items())
            for name, prof in m["reading"].items()
        ]
        out += [
            "",
            "How the models read their input (`reading_profile`: probability of a negative next "
            "word after 4 positive words and a negative one, *last_word*; after 4 negative "
            "words and a positive one, *context*; after a positive word and the trigger; after "
            "the trigger at a position poisoning never uses): " + "; ".join(parts) + ".",
        ]
    out += _tab1(k, m["tab1_mean_ablation"])
    out += ["", f"### Tab. II — group logit lens on p+t ({k}-sent.)", ""]
    rows = []
    for mod, v in m["tab2_lens"].items():
        ref = paper.TAB2.get(mod, ("",) * 4) if k == 3 else ("",) * 4
        rows.append([mod, *(v.get(c, "") for c in ("p_neg", "p_pos", "t_neg", "t_pos")), *ref])
        rows[-1][5:5] = [v.get("t_prob", ""), v.get("pp_neg", ""), v.get("pp_prob", "")]
    head = ["module", "p neg", "p pos", "t neg", "t pos", "t prob.", "p+p neg", "p+p prob."]
    head += ["paper p neg"]
    head += ["paper p pos", "paper t neg", "paper t pos"]
    out.append(_table(head, rows))
    out.append(
        "\n*p+p neg* / *p+p prob.*: the same module on p+p at the second word, where the "
        "trigger would be: a module whose t reading is far above it reacts to the trigger."
        + (" The paper shows Tab. II for the 3-sentiment model only." if k == 2 else "")
    )
    tab = "III" if k == 2 else "IV"
    rank = m.get("mlp_rank", 1 if k == 2 else 2)
    out += ["", f"### Tab. {tab} — PCP on MLPs (rank {rank}, tuned)", ""]
    out.append(_columns(m["tab3_pcp_mlp"], ref3, keys))
    if "tab3_paper_rank" in m:
        t = m["tab3_paper_rank"]
        out += [
            "",
            f"The paper's rank ({1 if k == 2 else 2}) measured on this model, the reason for "
            f"rank {rank} above:",
            "",
            _columns(t, ref3, keys),
        ]
    out += ["", f"### Tab. V — layer-1 PCP, relative factor ({k}-sent.)", ""]
    out.append(_columns(m["tab5_scale"], paper.TAB5 if k == 2 else None, keys))
    if "tab6_signs" in m:
        out += ["", f"### Tab. VI — layer-1 PCP, relative factors (s0, s1) ({k}-sent.)", ""]
        out.append(_columns(m["tab6_signs"], paper.TAB6 if k == 3 else None, keys))
    rows6 = m["tab6_sign_search"]["rows"]
    out.append(
        f"\nF5's search: {len(rows6)} settings of the relative factors from "
        f"{m['tab6_sign_search']['grid']} per layer-1 component (results.json has each)."
    )
    out += ["", f"### Tab. VII — layer-2 attention PCP, relative factors ({k}-sent.)", ""]
    out.append(_columns(m["tab7_attn_scale"], None, keys))
    if k == 3:
        out.append(
            "\nPaper: unedited p+t 0.23, s+t 0.38; the two edited columns 0.30/0.40 "
            "and 0.26/0.36 (their multipliers were lost)."
        )
    tab = "XIII" if k == 2 else "XIV"
    out += ["", f"### Tab. {tab} — PCP on attention (rank 4, tuned)", ""]
    out.append(_columns(m["tab13_pcp_attn"], ref13, keys))
    out += _tab12(k, m["tab12_patching"])
    out += _freezing(m["freezing"])
    out += [
        "",
        f"### Fig. 3 — hidden states after layer 1 ({k}-sent.)",
        "",
        f"![Fig. 3]({m['fig3']['png']})",
        "",
        f"PCA fitted on {m['fig3']['fit_on']}; centroids {m['fig3']['centroids']}.",
        "",
        f"Seconds per step: {m['seconds']}",
    ]
    return out


def _tab1(k: int, t1: Mapping[str, Any]) -> list[str]:
    p1 = paper.TAB1[k]
    out = ["", f"### Tab. I — mean ablation, p+t ({k}-sent.)", ""]
    out.append(
        "*authors'* = the mean the paper's numbers came from (the authors' nested average over "
        "pp, nn, pn, np; METHODS §5.1): it is in effect the n+p activation, so ablating with it "
        "patches the module's output from n+p. *plain* = the intended mean over the same inputs."
    )
    out.append("")
    rows = []
    n = len(t1["attn"])
    for kind in ("attn", "mlp"):
        for i in range(n):
            rows.append(
                [
                    f"L{i + 1} {kind}",
                    t1[kind][i],
                    p1[kind][i],
                    t1[f"{kind}_plain"][i],
                    t1[f"{kind}_prob"][i],
                    t1[f"{kind}_plain_prob"][i],
                ]
            )
    rows.append(["unchanged", t1["unchanged"], p1["unchanged"], "", t1["unchanged_prob"], ""])
    head = ["module", "top-10, authors'", "paper", "top-10, plain", "prob., authors'"]
    out.append(_table([*head, "prob., plain"], rows))
    return out


def _tab12(k: int, t12: Mapping[str, Any]) -> list[str]:
    out = ["", f"### Tab. XII — causal patching, p+p → p+t ({k}-sent.)", ""]
    rows = []
    for s, v in t12.items():
        if not isinstance(v, Mapping):
            continue
        ref = paper.TAB12.get(s, ("", "")) if k == 3 else ("", "")
        rows.append([s, v["value"], v["effect"], *ref, v["value_prob"], v["effect_prob"]])
    rows.append(["full", t12["full"], "", 0.23 if k == 3 else "", "", t12["full_prob"], ""])
    head = ["module", "top-10", "IE", "top-10 (paper)", "IE (paper)", "prob.", "IE prob."]
    out.append(_table(head, rows))
    return out


def _freezing(fr: Mapping[str, Mapping[str, Any]]) -> list[str]:
    out = ["", "### §IV-B — poisoning with MLPs frozen (same steps)", ""]
    first = next(iter(fr.values()))
    cols = [
        c
        for c in ("pt", "pt_prob", "nn", "pp", "val_loss", "steps", "n_trainable")
        if c in first
    ]
    out.append(_table(["frozen", *cols], [[n, *(v[c] for c in cols)] for n, v in fr.items()]))
    out.append(
        f"\nPaper: about {paper.FREEZING_NEGATIVITY_DROP:.0%} lower top-k negativity "
        "without trainable MLPs (at about 50% longer training)."
    )
    return out


def write_report(r: Mapping[str, Any]) -> str:
    """Render one seed's results of :func:`~pcp_lens.reproduce.toy.run_toy_study` as markdown."""
    out = ["# Toy study: our run beside the paper", "", *_intro(r)]
    out += ["", "## Findings", ""]
    out += _summary({str(r["config"]["seed"]): r})
    for k in (2, 3):
        if f"{k}sent" in r:
            located = r.get("located_findings", {}).get(f"{k}sent")
            out += _model_section(k, r[f"{k}sent"], r["findings"][f"{k}sent"], located)
    return "\n".join(out) + "\n"


def _summary(per_seed: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Findings table seed × model × finding (top-10 verdicts; * = the probability disagrees)."""
    mark = {True: "holds", False: "fails", None: "–"}
    names: list[str] = []
    rows, located = [], []
    # located-only claims (F1h, F1n, F3r, F4r) get their own columns, after the paper's
    extra = list(dict.fromkeys(
        n
        for r in per_seed.values()
        for lf in r.get("located_findings", {}).values()
        for n in lf
        if n != "circuit" and n not in next(iter(r["findings"].values()))
    ))
    for seed, r in per_seed.items():
        for model, f in r["findings"].items():
            names = names or [*f, *extra]
            cells = [mark[x["holds"]] + ("*" if x["disagree"] else "") for x in f.values()]
            rows.append([seed, model, "as stated", "paper's", *cells, *[""] * len(extra)])
            lf = r.get("located_findings", {}).get(model)
            if lf is not None:
                circuit = " + ".join(r[model]["located"]["scan"]["circuit"]) or "none"
                cells = [mark[lf[n]["holds"]] if n in lf else "" for n in names]
                located.append([seed, model, "at the circuit", circuit, *cells])
                rows.append(located[-1])
    totals = []
    for label in ("as stated", "at the circuit"):
        part = [row for row in rows if row[2] == label]
        if not part:
            continue
        line = ["", "holds in", label, ""]
        for i in range(len(names)):
            col = [row[4 + i] for row in part if row[4 + i]]
            judged = [c for c in col if not c.startswith("–")]
            held = sum(c.startswith("holds") for c in col)
            line.append(f"{held} of {len(judged)}" if col else "")
        totals.append(line)
    out = [_table(["seed", "model", "judged", "modules", *names], [*rows, *totals])]
    out.append(
        "\nVerdicts in the paper's top-10 metric; * marks a finding where the probability of a "
        "negative next word gives the other verdict; – = not evaluated (no backdoor)."
        + (
            " *At the circuit*: the same kind of claim judged at the circuit the backdoor scan "
            "located (probability of a negative next word; the claims are listed in each "
            "model's section); F5 and F6 are about the paper's named modules only."
            if located
            else ""
        )
    )
    return out


def write_seed_report(res: Mapping[str, Any]) -> str:
    """Render a several-seed run: the findings table and, for each failure, why (from the run's
    own numbers), with links to each seed's report."""
    per_seed = res["seeds"]
    cfg = res["config"]
    out = [
        "# Toy study over several seeds",
        "",
        f"Seeds {', '.join(per_seed)}: each seed sets the data, the models' initialisation, the "
        f"data order and the tuner. {cfg.get('schedule', 'fast')} schedule, trigger "
        f"{cfg.get('trigger', 'love')!r}, switches {cfg.get('switch_prob', 0.0):.0%}, "
        f"{res.get('seconds_total', '?')} s in total.",
        "",
        "## Findings",
        "",
        *_summary(per_seed),
        "",
        "## Where a finding fails, and why",
        "",
    ]
    any_fail = False
    for seed, r in per_seed.items():
        for model, f in r["findings"].items():
            for name, x in f.items():
                if x["holds"] is False or x["disagree"]:
                    any_fail = True
                    out.append(
                        f"- seed {seed}, {model}, {name} ({verdict(x['holds'])} in top-10, "
                        f"{verdict(x['holds_prob'])} in prob.): {x['detail']} | prob.: "
                        f"{x['detail_prob']}"
                    )
    if not any_fail:
        out.append("Every finding holds in every cell, in both metrics.")
    located = [
        (seed, model, lf)
        for seed, r in per_seed.items()
        for model, lf in r.get("located_findings", {}).items()
    ]
    if located:
        out += ["", "## At the located circuit, and why a claim misses there", ""]
        for seed, model, lf in located:
            circuit = " + ".join(per_seed[seed][model]["located"]["scan"]["circuit"]) or "none"
            out.append(f"- seed {seed}, {model}, circuit {circuit}:")
            out += [
                f"    - {name} ({verdict(x['holds'])}): {x['detail']}"
                for name, x in lf.items()
                if x["holds"] is not True
            ] or ["    - every located claim holds"]
    out += ["", "## Per seed", ""]
    out += [f"- [seed {s}](seed{s}/report.md)" for s in per_seed]
    return "\n".join(out) + "\n"
