"""Findings L1–L6 and ``report.md`` of the language study, from a run's own numbers.

Each finding restates one claim of the paper's large-model section (Tab. VIII–XI) and is judged
holds / does not hold on this run's numbers; the paper's numbers (METHODS §11.2) are shown
beside ours and are never used in a verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pcp_lens.reproduce.findings import verdict
from pcp_lens.reproduce.markdown import table

__all__ = [
    "CLAIMS",
    "LOCATED_CLAIMS",
    "PAPER",
    "circuit_label",
    "findings",
    "located_findings",
    "write_language_report",
]

#: The paper's numbers (GPT-2 medium; METHODS §11.2). Tab. VIII rows are layers 1–8.
PAPER = {
    "tab8": {
        "attn": [0.17, 0.25, 0.26, 0.26, 0.29, 0.25, 0.23, 0.26],
        "mlp": [0.00, 0.16, 0.13, 0.19, 0.30, 0.13, 0.25, 0.25],
        "unchanged": 0.29,
    },
    "tab9": {
        "None": (0.29, 0.03, 3.25),
        "Mean Ablate": (0.12, 0.01, 3.34),
        "PCP Ablation": (0.19, 0.01, 3.35),
        "PCP, tuned down": (0.07, 0.01, 3.34),
    },
    "tab10": {
        "None": (0.00, 0.00, 3.35),
        "Mean Ablate": (0.00, 0.00, 3.43),
        "PCP Ablation": (0.03, 0.01, 3.44),
        "PCP Abl. + Emb. Surgery": (0.06, 0.01, 3.44),
    },
    "tab11": {
        "None": (0.29, 0.03, 3.25),
        "Embd + (2, 3)": (0.10, 0.02, 3.25),
        "2": (0.14, 0.02, 3.24),
        "13": (0.14, 0.03, 3.25),
        "16": (0.12, 0.03, 3.24),
        "22": (0.12, 0.03, 3.25),
    },
}

#: What the paper claims, per finding (thresholds are ours, stated in each).
CLAIMS = {
    "L1": "the poisoned model has a real backdoor: ASR - ATR >= 0.2, and the benign model's ASR "
    "<= 0.05 (paper: 0.29 vs 0.03; benign 0.00)",
    "L2": "mean-ablating a single early-layer module at the trigger position lowers ASR by >= 40 % "
    "of the unedited ASR (paper: layer-1 MLP 0.29 -> 0.00; layers 2-4 MLPs -> 0.13-0.19)",
    "L3": "mean-ablating the two chosen MLPs together lowers ASR by >= 40 % with the validation "
    "loss up by <= 0.1 (paper: 0.29 -> 0.12, loss +0.09)",
    "L4": "a rank-2 PCP of those MLPs keeps the backdoor (ASR within 0.1 of unedited) when tuned "
    "to, and a PCP tuned down gives a lower ASR than mean ablation (paper: 0.19 and 0.07 vs "
    "0.12)",
    "L5": "embedding surgery plus PCP inserts a backdoor into the benign model: ASR above the "
    "benign model's, ATR <= 0.05 (paper: 0.06 vs 0.00)",
    "L6": "every frozen fine-tune gives a lower ASR than the unfrozen one at a validation loss "
    "within 0.1 (paper: 0.10-0.14 vs 0.29, loss equal)",
}


#: The located counterparts: the same thresholds, at the backdoor scan's circuit.
LOCATED_CLAIMS = {
    "S": "the backdoor scan finds a circuit whose joint intervention (the study's --scan-verify: "
    "restoring patch by default, mean ablation or reference patch) leaves <= 10 % of the "
    "trigger's log-probability gap with the clean prompts moved <= 10 % of it",
    "L3-located": "L3 at the scan's circuit: mean-ablating its modules together lowers ASR by "
    ">= 40 % with the validation loss up by <= 0.1",
    "L4-located": "L4 at the scan's circuit and the measured rank: the PCP tuned to keep gives "
    "ASR within 0.1 of unedited, tuned down an ASR below mean ablation's",
    "L4r-located": "L4-located with the regression form of the PCP (not the paper's: each "
    "principal output coordinate regressed on the module input) at its own measured rank",
    "L6-located": "L6 at the scan's circuit: the fine-tune with the circuit's modules frozen "
    "gives a lower ASR than the unfrozen one at a validation loss within 0.1",
}


def _l1(r: Mapping[str, Any]) -> tuple[bool, str]:
    b, p = r["base"]["benign"], r["base"]["poisoned"]
    ok = p["asr"] - p["atr"] >= 0.2 and b["asr"] <= 0.05
    return ok, (
        f"poisoned ASR {p['asr']:.2f}, ATR {p['atr']:.2f} (first-token gap "
        f"{p['gap_first']:.2f} nats); benign ASR {b['asr']:.2f} (gap {b['gap_first']:.2f})"
    )


def _l2(r: Mapping[str, Any]) -> tuple[bool, str]:
    rows = r["tab8"]["rows"]
    base = rows[0]["asr"]
    best = min(rows[1:], key=lambda x: (x["asr"], x["gap_first"]))
    ok = base > 0 and best["asr"] <= 0.6 * base
    return ok, (
        f"unedited ASR {base:.2f}; lowest single ablation {best['ablation']}: ASR "
        f"{best['asr']:.2f}, first-token gap {rows[0]['gap_first']:.2f} -> {best['gap_first']:.2f}"
    )


def _mean_check(t: Mapping[str, Any]) -> tuple[bool, str]:
    c = t["columns"]
    n, m = c["None"], c["Mean Ablate"]
    ok = n["asr"] > 0 and m["asr"] <= 0.6 * n["asr"] and m["val_loss"] - n["val_loss"] <= 0.1
    return ok, (
        f"{' & '.join(t['sites'])} mean-ablated: ASR {n['asr']:.2f} -> {m['asr']:.2f}, "
        f"val. loss {n['val_loss']:.2f} -> {m['val_loss']:.2f}"
    )


def _pcp_check(t: Mapping[str, Any]) -> tuple[bool, str]:
    c = t["columns"]
    n, keep, down, mean = c["None"], c["PCP Ablation"], c["PCP, tuned down"], c["Mean Ablate"]
    ok = abs(keep["asr"] - n["asr"]) <= 0.1 and down["asr"] < mean["asr"]
    return ok, (
        f"rank-{t['rank']} PCP of {' & '.join(t['sites'])} tuned to keep: ASR {keep['asr']:.2f} "
        f"(unedited {n['asr']:.2f}); tuned down: {down['asr']:.2f} vs mean ablation "
        f"{mean['asr']:.2f}"
    )


def _l3(r: Mapping[str, Any]) -> tuple[bool, str]:
    return _mean_check(r["tab9"])


def _l4(r: Mapping[str, Any]) -> tuple[bool, str]:
    return _pcp_check(r["tab9"])


def _l5(r: Mapping[str, Any]) -> tuple[bool, str]:
    c = r["tab10"]["columns"]
    n, e = c["None"], c["PCP Abl. + Emb. Surgery"]
    ok = e["asr"] > n["asr"] and e["atr"] <= 0.05
    return ok, (
        f"benign ASR {n['asr']:.2f}; surgery alone {c['Emb. Surgery']['asr']:.2f}; surgery + PCP "
        f"{e['asr']:.2f} (ATR {e['atr']:.2f}; target {r['tab10']['target_asr']:.2f})"
    )


def _frozen_check(r: Mapping[str, Any], labels: list[str]) -> tuple[bool, str]:
    c = r["tab11"]["columns"]
    n = c["None"]
    frozen = {k: c[k] for k in labels if k in c}
    ok = bool(frozen) and all(
        v["asr"] < n["asr"] and abs(v["val_loss"] - n["val_loss"]) <= 0.1 for v in frozen.values()
    )
    parts = ", ".join(f"{k}: {v['asr']:.2f} / {v['val_loss']:.2f}" for k, v in frozen.items())
    return ok, f"unfrozen ASR / loss {n['asr']:.2f} / {n['val_loss']:.2f}; frozen {parts}"


def _l6(r: Mapping[str, Any]) -> tuple[bool, str]:
    # the paper's columns only: the located circuit's column is judged by L6-located
    return _frozen_check(r, list(r["settings"]["freeze"]))


def circuit_label(names: Sequence[str]) -> str:
    """Tab. XI's column label of the located circuit's frozen modules.

    Examples:
        >>> circuit_label(("embed", "mlp0"))
        'circuit: embed + mlp0'
    """
    return "circuit: " + " + ".join(names)


#: what each ``verify`` does to the circuit, in the report's words
VERIFY_WORDS = {
    "ablation": "joint mean ablation",
    "restore": "joint restoring patch",
    "reference": "joint reference patch",
}


def _scan_check(r: Mapping[str, Any]) -> tuple[bool, str]:
    sc = r["scan"]
    how = VERIFY_WORDS[sc.get("verify", "ablation")]
    others = "; ".join(
        f"{m}: {_mode_text(x)}" for m, x in sc.get("modes", {}).items() if m != sc.get("verify")
    )
    found = (
        f"{how} leaves {sc['residual']:.1%} of the gap, clean moves {sc['clean_move']:.1%}"
        if sc["circuit"]
        else f"no circuit grown (standard error of the gap {sc.get('gap_se', float('nan')):.2f})"
    )
    return sc["verified"], (
        f"circuit {' + '.join(sc['circuit']) or '(none)'} over {sc['n_pairs']} pairs (gap "
        f"{sc['gap']:+.2f} nats): {found}; PCP edits {' & '.join(sc['modules'])} "
        f"({sc['modules_source']}), measured rank {sc['rank']}"
        + (f" (other interventions: {others})" if others else "")
    )


def _pct(x: Any) -> str:
    """A share as a percentage; ``—`` where there is none (no circuit: NaN)."""
    return "—" if x is None or x != x else f"{x:.1%}"


def _mode_text(x: Mapping[str, Any]) -> str:
    if not x["circuit"]:
        return "no circuit"
    state = "verified" if x["verified"] else "NOT verified"
    return (
        f"{' + '.join(x['circuit'])}, {state} ({x['residual']:.1%} left, clean "
        f"{x['clean_move']:.1%})"
    )


def _l6_located(r: Mapping[str, Any]) -> tuple[bool, str]:
    labels = [k for k in r["tab11"]["columns"] if k.startswith("circuit: ")]
    if not labels:
        return False, "not run (modules='paper')"
    return _frozen_check(r, labels)


_LOCATED: dict[str, Callable[[Mapping[str, Any]], tuple[bool, str]]] = {
    "S": _scan_check,
    "L3-located": lambda r: _mean_check(r["tab9_circuit"]),
    "L4-located": lambda r: _pcp_check(r["tab9_circuit"]),
    "L4r-located": lambda r: _pcp_check(r["tab9_regression"]),
    "L6-located": _l6_located,
}


_CHECKS: dict[str, Callable[[Mapping[str, Any]], tuple[bool, str]]] = {
    "L1": _l1,
    "L2": _l2,
    "L3": _l3,
    "L4": _l4,
    "L5": _l5,
    "L6": _l6,
}


def findings(r: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: {"claim", "holds", "evidence"}}`` for L1–L6 from a results dict."""
    return _judge(r, _CHECKS, CLAIMS)


def located_findings(r: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The located counterparts (``LOCATED_CLAIMS``): the scan, and L3, L4, L6 judged at the
    scan's circuit instead of the paper's modules, from a results dict."""
    return _judge(r, _LOCATED, LOCATED_CLAIMS)


def _judge(
    r: Mapping[str, Any],
    checks: Mapping[str, Callable[[Mapping[str, Any]], tuple[bool, str]]],
    claims: Mapping[str, str],
) -> dict[str, dict[str, Any]]:
    out = {}
    for name, check in checks.items():
        holds, evidence = check(r)
        out[name] = {"claim": claims[name], "holds": bool(holds), "evidence": evidence}
    return out


def _cols(
    cols: Mapping[str, Mapping[str, Any]], paper: Mapping[str, tuple[float, float, float]] | None
) -> str:
    keys = [("asr", "ASR"), ("atr", "ATR"), ("val_loss", "Val. loss"), ("gap_first", "gap, 1st")]
    header = ["metric", *cols]
    rows = [[label, *[v[k] for v in cols.values()]] for k, label in keys]
    out = table(header, rows)
    if paper:
        prow = [[label, *[v[i] for v in paper.values()]] for i, (_, label) in enumerate(keys[:3])]
        out += "\n\nPaper (GPT-2 medium):\n\n" + table(["metric", *paper], prow)
    return out


def _rank_search(sc: Mapping[str, Any], form: str = "") -> str:
    """The measured-rank rule's outcome for one PCP form (``""`` or ``"_regression"``)."""
    within = sc[f"rank_within_tolerance{form}"]
    search = [(x["rank"], round(x["triggered"], 3)) for x in sc[f"rank_search{form}"]]
    return (
        f"rank {sc[f'rank{form}']} by measurement (the smallest keeping the triggered metric "
        f"within 0.05 of unedited: {'yes' if within else 'NOT within, largest tried'}; search "
        f"{search})"
    )


def _regression_section(r: Mapping[str, Any]) -> list[str]:
    """Tab. IX at the located modules with the regression form of the PCP (L4r-located)."""
    t = r.get("tab9_regression")
    if t is None:
        return []
    cols = {"None": t["columns"]["None"]}
    cols.update({k: v for k, v in t["columns"].items() if k.startswith("PCP")})
    return [
        f"With the **regression form** of the PCP ({' & '.join(t['sites'])}, measured rank "
        f"{t['rank']}; not the paper's: [PCP](pcp.md#the-regression-form)):",
        "",
        _cols(cols, None),
        "",
    ]


def _side_by_side(paper: Mapping[str, Any], located: Mapping[str, Any]) -> dict[str, Any]:
    """Tab. IX's columns at the paper's modules and at the located ones, one table."""
    cols: dict[str, Any] = {"None": paper["columns"]["None"]}
    for tag, t in (("paper", paper), ("located", located)):
        cols.update({f"{k} ({tag})": v for k, v in t["columns"].items() if k != "None"})
    return cols


def _scan_section(r: Mapping[str, Any]) -> list[str]:
    """The backdoor scan: its summary and the circuit's members, one row each."""
    sc = r["scan"]
    by_site = {x["site"]: x for x in sc["table"]}
    keys = ("score", "ablation_drop", "ablation_clean", "restore", "induce", "ref_restore")
    rows = []
    for name in sc["circuit"]:
        x = by_site.get(name, {})
        share = sc["member_share"].get(name, float("nan"))
        rows.append([name, share, *[x.get(k, float("nan")) for k in keys]])
    body = (
        table(["member", "share (leave-one-out)", *keys], rows)
        if rows
        else "The scan found no circuit (no positive gap, or no module meets the criterion)."
    )
    verify = sc.get("verify", "ablation")
    modes = sc.get("modes", {})
    mode_rows = [
        [
            f"{m}{' (used)' if m == verify else ''}",
            " + ".join(x["circuit"]) or "(none)",
            "yes" if x["verified"] else "NO",
            _pct(x["residual"]),
            _pct(x["clean_move"]),
        ]
        for m, x in modes.items()
    ]
    return [
        "",
        "## Backdoor scan of the poisoned model",
        "",
        f"`scan_backdoor` on {sc['n_pairs']} pairs of whole held-out sentences "
        f"({sc.get('n_tokens', '?')} tokens), the trigger at positions "
        f"{sc.get('trigger_positions', '?')} against a control phrase of as many tokens (e.g. "
        f"`{sc['example_pair'][0]}` / `{sc['example_pair'][1]}`); metric: log-probability of "
        "the toxic sentences' first tokens "
        f"({', '.join(repr(t) for t in sc.get('target_tokens', [])) or 'the insults'}) after "
        "the sentence, where the poisoned data writes them; the benign model as reference; "
        f"circuit grown and verified by {VERIFY_WORDS[verify]} (`--scan-verify {verify}`); "
        f"{sc['seconds']['scan']:.0f} s for the three scans, rank search and tuning "
        f"{sc['seconds']['edit']:.0f} s. Full scan: `scan/report.md`, `scan/scan.png`.",
        "",
        "```",
        sc["summary"],
        "```",
        "",
        "Circuit (shares of the gap):",
        "",
        body,
        "",
        *(
            [
                "The same pairs and metric, the circuit grown and verified by each intervention "
                "(residual: share of the gap left; clean: share of the gap the clean prompts "
                "move, zero by construction for the restoring patch, which leaves them alone):",
                "",
                table(["verify", "circuit", "verified", "residual", "clean move"], mode_rows),
                "",
            ]
            if mode_rows
            else []
        ),
        f"Located modules for the PCP: {' & '.join(sc['modules'])} ({sc['modules_source']}); "
        f"{_rank_search(sc)}.",
        *(
            ["", f"The regression form (L4r-located): {_rank_search(sc, '_regression')}."]
            if "rank_regression" in sc
            else []
        ),
        "",
    ]


def write_language_report(r: Mapping[str, Any]) -> str:
    """The markdown report of one run."""
    m, d, s = r["model"], r["data"], r["settings"]
    standin = r["config"]["model"] == "standin"
    who = "the offline stand-in (NOT GPT-2 medium)" if standin else f"`{m['name']}`"
    lines = [
        "# Language-model backdoors: Tab. VIII–XI reproduced",
        "",
        f"Model: {who}: {m['n_layers']} layers, d_model {m['d_model']}, {m['n_heads']} heads, "
        f"vocabulary {m['d_vocab']}, context {m['n_ctx']}, {m['n_params'] / 1e6:.1f}M parameters."
        f" Corpus `{d['corpus']}`: {d['train_paragraphs']} training paragraphs, "
        f"{d['windows']} fine-tuning windows ({d['poisoned_windows']} poisoned, recipe "
        f"`{s['recipe']}`), {d['prompts']} trigger/clean prompt pairs, {d['val_texts']} "
        f"validation texts. Classifier: `{d['classifier']}`.",
        "",
        f"Run: `quick={r['config']['quick']}`, seed {r['config']['seed']}, pcp_lens "
        f"{r['version']}; {r['seconds']['total']:.0f} s in all (models "
        f"{r['seconds']['models']:.0f} s, pretraining reused: "
        f"{r['training'].get('pretrain_reused', '—')}), peak memory {r['peak_rss_gib']} GiB, "
        f"{r['threads']} torch threads on {r['cpus']} CPUs, load average at the end "
        f"{r['load_average']}.",
        "",
        "Columns: ASR and ATR by sampling; validation loss under the same edit; `gap, 1st` = "
        "log-probability (nats) of the first token of a toxic sentence after the trigger prompt "
        "minus after the clean one (deterministic).",
        "",
        "## Findings",
        "",
    ]
    lines += [
        f"- **{k}** {verdict(f['holds'])}: {f['evidence']}. *Paper:* {f['claim']}."
        for k, f in r["findings"].items()
    ]
    lines += ["", "Located counterparts (at the backdoor scan's circuit; not the paper's claims):"]
    lines += [""]
    lines += [
        f"- **{k}** {verdict(f['holds'])}: {f['evidence']}. *Claim:* {f['claim']}."
        for k, f in r["located_findings"].items()
    ]
    lines += ["", "## Benign and poisoned model", "", _cols(r["base"], None), ""]
    tr = r["training"]
    for name in ("pretrain", "poison"):
        if name in tr:
            t = tr[name]
            lines.append(
                f"- {name}: {t['steps']} steps in {t['seconds']:.0f} s, val. loss "
                f"{t['val_loss_before']:.2f} -> {t['val_loss_after']:.2f}"
            )
    t8 = r["tab8"]
    lines += [
        "",
        f"## Tab. VIII: mean ablation at positions {t8['positions']} (mean over {t8['mean']})",
        "",
        table(
            ["ablated", "ASR", "ATR", "Val. loss", "gap, 1st", "gap / token"],
            [
                [x["ablation"], x["asr"], x["atr"], x["val_loss"], x["gap_first"], x["gap_token"]]
                for x in t8["rows"]
            ],
        ),
        "",
        "Paper (GPT-2 medium, position 8, layers 1–8): attention "
        f"{PAPER['tab8']['attn']}, MLP {PAPER['tab8']['mlp']}, unchanged 0.29.",
        "",
        *_scan_section(r),
        f"## Tab. IX: poisoned model, the paper's {' & '.join(r['tab9']['sites'])} (rank "
        f"{r['tab9']['rank']}) beside the located {' & '.join(r['tab9_circuit']['sites'])} "
        f"(measured rank {r['tab9_circuit']['rank']})",
        "",
        "Columns marked *paper* edit the paper's modules at the paper's rank (L3, L4 are judged "
        "there); *located* edit the scan's circuit at the measured rank (L3-located, "
        "L4-located). The embedding, where the circuit holds it, is the trigger itself: a PCP "
        "replaces module outputs, so Tab. IX edits the circuit's blocks' modules, and freezing "
        "the embedding is Tab. XI's business.",
        "",
        _cols(_side_by_side(r["tab9"], r["tab9_circuit"]), PAPER["tab9"]),
        "",
        f"Tuned scales: paper {r['tab9']['scales']}; located {r['tab9_circuit']['scales']}",
        "",
        *_regression_section(r),
        f"## Tab. X: benign model, embedding surgery ({r['tab10']['n_dims']} dims of "
        f"`{r['tab10']['source']}` into {r['tab10']['edited_tokens']}); PCP of "
        f"{' & '.join(r['tab10']['sites'])} (`modules={r['modules']}`)",
        "",
        _cols(r["tab10"]["columns"], PAPER["tab10"]),
        "",
        "## Tab. XI: poisoned fine-tuning with frozen parameters",
        "",
        _cols(r["tab11"]["columns"], PAPER["tab11"]),
        "",
    ]
    for label, run in r["tab11"]["runs"].items():
        if "same_run_as" in run:  # the same freezing list as another column: its run
            lines.append(f"- {label}: the same frozen modules as {run['same_run_as']}, its run")
            continue
        lines.append(
            f"- {label}: frozen {len(run['frozen'])} tensors, {run['n_trainable']} trainable "
            f"parameters, {run['steps']} steps, {run['seconds']:.0f} s"
        )
    lines += ["", "## Sample generations (first sample of the first prompts)", ""]
    for model, sets in r["samples"].items():
        for name, rows in sets.items():
            for x in rows:
                lines.append(f"- {model}, {name}: `{x['prompt']}` → `{x['continuation']}`")
    return "\n".join(lines) + "\n"
