"""``report.md`` of the toy study: every table with our numbers beside the paper's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pcp_lens.reproduce import paper


def _f(x: Any) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def _columns(
    cols: Mapping[str, Mapping[str, Any]],
    ref: Mapping[str, Sequence[float]] | None,
    keys: Sequence[str],
) -> str:
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
    return _table(header, rows)


def write_report(r: Mapping[str, Any]) -> str:
    """Render the results of :func:`~pcp_lens.reproduce.toy.run_toy_study` as markdown."""
    out = ["# Toy study: our run beside the paper", ""]
    cfg = r["config"]
    out.append(
        f"Run: {'quick' if cfg['quick'] else 'full'}, "
        f"{cfg.get('schedule', 'fast')} training schedule, seed {cfg['seed']}, "
        f"{r.get('seconds_total', '?')} s in total, torch {r.get('torch')}. "
        "Negativity = top-10 share of negative words at the last position, mean over the "
        f"{cfg['n_eval']} held-out two-word inputs per combination. Paper layers are 1-based."
    )
    out += ["", "## Findings", ""]
    for name, f in r["findings"].items():
        mark = {True: "holds", False: "does NOT hold", None: "not evaluated"}[f["holds"]]
        out.append(f"- **{name}** — {mark}: {f['detail']}")
    for k, ref3, ref13 in ((2, paper.TAB3, paper.TAB13), (3, paper.TAB4, paper.TAB14)):
        m = r.get(f"{k}sent")
        if m is None:
            continue
        keys = [x for x in ("pp", "nn", "ss", "pn", "np", "pt", "st") if x in m["unedited"]]
        out += ["", f"## {k}-sentiment model", ""]
        tr = m["training"]
        if tr.get("reused_checkpoints"):
            out.append("Models reloaded from checkpoints in `models/`.")
        else:
            out.append(
                f"Training: benign {tr['benign_seconds']} s, poisoning {tr['poison_seconds']} s; "
                f"validation loss benign {tr['benign_history']['val_loss']}, "
                f"poisoned {tr['poison_history']['val_loss']}."
            )
        out += [
            "",
            "Unedited scores: " + ", ".join(f"{a} {_f(b)}" for a, b in m["unedited"].items()),
        ]
        if "unedited_mass" in m:
            out += [
                "",
                "Probability of a negative next word (a diagnostic beside the top-10 share, "
                "which ranks near-tied words): "
                + ", ".join(f"{a} {_f(b)}" for a, b in m["unedited_mass"].items()),
            ]
        if "reading" in m:
            parts = [
                f"{name}: " + ", ".join(f"{a} {_f(b)}" for a, b in prof.items())
                for name, prof in m["reading"].items()
            ]
            out += [
                "",
                "How the models read their input (`reading_profile`: probability of a negative "
                "next word after 4 positive words and a negative one, *last_word*; after 4 "
                "negative words and a positive one, *context*; after a positive word and the "
                "trigger; after the trigger at a position poisoning never uses): "
                + "; ".join(parts)
                + ".",
            ]
        t1, p1 = m["tab1_mean_ablation"], paper.TAB1[k]
        out += ["", f"### Tab. I — mean ablation (p+t negativity; {k}-sent.)", ""]
        has_mass = "mlp_mass" in t1
        rows = [
            [f"L{i + 1}", t1["attn"][i], p1["attn"][i], t1["mlp"][i], p1["mlp"][i]]
            + ([t1["attn_mass"][i], t1["mlp_mass"][i]] if has_mass else [])
            for i in range(len(t1["attn"]))
        ]
        rows.append(
            ["unchanged", t1["unchanged"], p1["unchanged"], "", ""]
            + ([t1["unchanged_mass"], ""] if has_mass else [])
        )
        header = ["layer", "attn (ours)", "attn (paper)", "mlp (ours)", "mlp (paper)"]
        if has_mass:
            header += ["attn: neg. prob.", "mlp: neg. prob."]
        out.append(_table(header, rows))
        if k == 3:
            out += ["", "### Tab. II — group logit lens on p+t (3-sent.)", ""]
            rows = []
            for mod, v in m["tab2_lens"].items():
                ref = paper.TAB2.get(mod, ("",) * 4)
                rows.append(
                    [
                        mod,
                        v.get("p_neg", ""),
                        v.get("p_pos", ""),
                        v.get("t_neg", ""),
                        v.get("t_pos", ""),
                        *ref,
                    ]
                )
            out.append(
                _table(
                    [
                        "module",
                        "p neg",
                        "p pos",
                        "t neg",
                        "t pos",
                        "paper p neg",
                        "paper p pos",
                        "paper t neg",
                        "paper t pos",
                    ],
                    rows,
                )
            )
        tab = "III" if k == 2 else "IV"
        out += ["", f"### Tab. {tab} — PCP on MLPs (rank {1 if k == 2 else 2}, tuned)", ""]
        out.append(_columns(m["tab3_pcp_mlp"], ref3, keys))
        if k == 2:
            out += ["", "### Tab. V — layer-1 PCP, relative factor (2-sent.)", ""]
            out.append(_columns(m["tab5_scale"], paper.TAB5, keys))
        else:
            out += ["", "### Tab. VI — layer-1 PCP, relative factors (s0, s1) (3-sent.)", ""]
            out.append(_columns(m["tab6_signs"], paper.TAB6, keys))
            out += ["", "### Tab. VII — layer-2 attention PCP, relative factors (3-sent.)", ""]
            out.append(_columns(m["tab7_attn_scale"], None, keys))
            out.append(
                "\nPaper: unedited p+t 0.23, s+t 0.38; the two edited columns 0.30/0.40 "
                "and 0.26/0.36 (their multipliers were lost)."
            )
        tab = "XIII" if k == 2 else "XIV"
        out += ["", f"### Tab. {tab} — PCP on attention (rank 4, tuned)", ""]
        out.append(_columns(m["tab13_pcp_attn"], ref13, keys))
        out += ["", f"### Tab. XII — causal patching, p+p → p+t ({k}-sent.)", ""]
        t12 = m["tab12_patching"]
        rows = [
            [s, v["value"], v["effect"], *(paper.TAB12.get(s, ("", "")) if k == 3 else ("", ""))]
            for s, v in t12.items()
            if s != "full"
        ]
        rows.append(["full", t12["full"], "", 0.23 if k == 3 else "", ""])
        out.append(_table(["module", "neg (ours)", "IE (ours)", "neg (paper)", "IE (paper)"], rows))
        out += ["", "### §IV-B — poisoning with MLPs frozen (same steps)", ""]
        fr = m["freezing"]
        cols = [
            c
            for c in ("pt", "nn", "pp", "val_loss", "steps", "n_trainable")
            if c in next(iter(fr.values()))
        ]
        out.append(_table(["frozen", *cols], [[n, *(v[c] for c in cols)] for n, v in fr.items()]))
        out.append(
            f"\nPaper: about {paper.FREEZING_NEGATIVITY_DROP:.0%} lower top-k negativity "
            "without trainable MLPs (at about 50% longer training)."
        )
        out += [
            "",
            f"### Fig. 3 — hidden states after layer 1 ({k}-sent.)",
            "",
            f"![Fig. 3]({m['fig3']['png']})",
            "",
            f"PCA fitted on {m['fig3']['fit_on']}; centroids {m['fig3']['centroids']}.",
        ]
        out += ["", f"Seconds per step: {m['seconds']}"]
    return "\n".join(out) + "\n"
