"""The toy study's claims judged where the scan finds the backdoor, not where the paper found it.

The paper's tables edit the modules it named (the layer-1 MLP, the layer-2 attention); in our toy
models poisoning puts the trigger's mechanism elsewhere, and where it moves with the seed. Here
:func:`~pcp_lens.scan.scan_backdoor` locates it (p+t against p+p pairs, the probability of a
negative next word, the benign model as reference, the circuit verified by the joint reference
patch, Tab. I's plain mean for ablation, n+n as a control), and the same kinds of claim are
measured at the located circuit:

1. ablating the circuit jointly sends p+t to n+p's level while p+p and n+n stay put (F1), and
   the same at head granularity to the clean side's mean (F1h): the circuit's attention layers
   split into their heads, in the scan's score order, the smallest prefix that removes p+t
   ablated to p+p's own mean; and at unit granularity (F1n): heads and MLP neurons, ranked by
   attribution patching, prefixes of 1, 2, 4, ... units to p+p's mean;
2. a circuit module leads the lens's trigger shift (F2);
3. a PCP of the circuit at the smallest rank that keeps p+t keeps it when tuned, and removes it
   when tuned down (F3; F3r with the regression form of the PCP, whose read vectors are fitted,
   since the paper's symmetric M cannot pass on what an attention layer reads in one direction
   and writes in another);
4. scaling that PCP tunes p+t monotonically (F4; F4r);
5. freezing the circuit's modules during a second poisoning from the same benign model (same
   batches, same steps) lowers p+t, and a scan of that model says where the backdoor went (F7).

:func:`located_tables` measures; :func:`pcp_lens.reproduce.findings.located_findings` judges.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pandas as pd
import torch
from torch import Tensor

from pcp_lens import _tl
from pcp_lens.ablation import ablation_sweep
from pcp_lens.means import ablation_means
from pcp_lens.pcp import PCPForm
from pcp_lens.reproduce import paper
from pcp_lens.reproduce.toy_tables import MEAN_KEYS, METRIC_SUFFIX, ROW_KEYS, ToyCtx
from pcp_lens.scan import SCAN_KINDS, BackdoorScan, Verify, circuit_modules, scan_backdoor
from pcp_lens.sites import Site, all_sites
from pcp_lens.toy.train import poison

#: Shown per model: the scan's top rows.
TOP_ROWS = 8


def located_scan(
    c: ToyCtx, model: Any = None, *, verify: Verify = "reference", progress: bool = False
) -> BackdoorScan:
    """Scan ``model`` (default: the study's poisoned model) on the study's p+t / p+p pairs.

    The metric is the probability of a negative next word; the benign model is the reference.
    The circuit is grown and verified by ``verify`` (default: the joint reference patch, the
    benign model's activations put in, on p+t, p+p and n+n alike: where poisoning changed the
    model). Mean ablation, the scan's evidence and the located F1, is to Tab. I's plain mean over
    pp, nn, pn, np at the last position, where the trigger also is: there it removes what every
    input needs (layer-0 attention carries every last word), which is why the circuit is not
    verified by it (docs/toy_study.md). n+n is a control the circuit must leave alone: on p+p
    alone, a module that reads every last word looks trigger-specific, since p+p's own mean is
    all it is compared with.
    """
    model = c.model if model is None else model
    # the trigger is a positive word: where p+p's second word is the trigger itself, the two
    # inputs are the same and the pair says nothing about the trigger
    keep = (c.tokens["pt"] != c.tokens["pp"]).any(1)
    sites = all_sites(model, kinds=SCAN_KINDS, heads=True)
    means = ablation_means(
        model, {k: c.tokens[k] for k in MEAN_KEYS}, sites, positions=[-1], progress=False
    )
    return scan_backdoor(
        model,
        c.tokens["pt"][keep],
        c.tokens["pp"][keep],
        c.mass,
        reference=c.benign.model,
        means=means,
        controls={"nn": c.tokens["nn"]},
        verify=verify,
        seed=c.seed,
        progress=progress,
    )


def _scan_record(scan: BackdoorScan, seconds: float) -> dict[str, Any]:
    i = scan.info
    top = scan.table.sort_values("rank").head(TOP_ROWS)
    cols = ["rank", "site", "score", "score_lo", "score_hi", "ablation_drop", "ablation_clean"]
    cols += ["restore", "induce", "lens_shift", "ref_restore", "act_distance"]
    table = scan.table
    modules = cast(pd.DataFrame, table[table["kind"].isin(["attn", "mlp"]) & table["head"].isna()])
    return {
        "circuit": list(scan.circuit),
        "modules": circuit_modules(scan.circuit, embed=True),
        "verified": scan.verified,
        "verify": scan.info["verify"],
        "gap": round(i["gap"], 4),
        "residual": round(float(i["circuit_residual"]), 4) if scan.circuit else None,
        "clean_move": round(float(i["circuit_clean"]), 4) if scan.circuit else None,
        "member_share": {k: round(v, 4) for k, v in i["member_share"].items()},
        "heads": i["heads"],
        "embedding_moved": bool(i["embedding"]["changed"]) if i.get("embedding") else None,
        "lens_shift": {
            r["site"]: round(float(r["lens_shift"]), 4) for r in modules.to_dict("records")
        },
        "top": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k in cols}
            for r in top.to_dict("records")
        ],
        "summary": scan.summary(),
        "seconds": round(seconds, 1),
    }


def _joint_ablations(
    c: ToyCtx, combos: Mapping[str, Sequence[str]], mean_keys: Sequence[str] = MEAN_KEYS
) -> dict[str, dict[str, float]]:
    """Both metrics on every input set with each combination mean-ablated jointly at the last
    position, to the plain mean over ``mean_keys`` (default Tab. I's: pp, nn, pn, np); one sweep,
    so the unedited baseline and the means are computed once."""
    sites = list(dict.fromkeys(s for members in combos.values() for s in members))
    df = ablation_sweep(
        c.model,
        {k: c.tokens[k] for k in ROW_KEYS[c.k]},
        c.metrics,
        sites=[],
        combos={name: list(members) for name, members in combos.items()},
        method="mean",
        means=ablation_means(
            c.model, {k: c.tokens[k] for k in mean_keys}, sites, [-1], progress=False
        ),
        positions=[-1],
        progress=False,
    )
    out: dict[str, dict[str, float]] = {name: {} for name in combos}
    for r in cast(pd.DataFrame, df[df["site"].isin(list(combos))]).to_dict("records"):
        key = f"{r['input_set']}{METRIC_SUFFIX[str(r['metric'])]}"
        out[str(r["site"])][key] = round(float(r["value"]), 4)
    return out


def head_members(scan: BackdoorScan) -> list[str]:
    """The circuit with each attention layer split into all its heads, in the scan's score order.

    A layer such as ``attn0`` carries every input's last word in the toy models, so no mean of
    it removes only the trigger's part; its heads may (docs/toy_study.md).
    """
    table = scan.table
    members: list[str] = []
    for name in scan.circuit:
        s = Site.parse(name)
        if s.kind == "attn" and s.head is None:
            of_layer = (table["kind"] == "attn") & (table["layer"] == s.layer)
            members += table.loc[of_layer & table["head"].notna(), "site"].astype(str).tolist()
        else:
            members.append(name)
    score = dict(zip(table["site"], table["score"], strict=True))
    # stable: ties keep the circuit's order
    return sorted(dict.fromkeys(members), key=lambda m: -float(score[m]))


def _head_ablation(c: ToyCtx, scan: BackdoorScan) -> list[dict[str, Any]]:
    """Every prefix of :func:`head_members` ablated jointly to p+p's mean (the scan's clean side):
    ``[{"members": [...], <set>_prob: ...}, ...]``; the findings judge the smallest that
    removes p+t."""
    members = head_members(scan)
    prefixes = {f"heads[:{i}]": members[:i] for i in range(1, len(members) + 1)}
    scores = _joint_ablations(c, prefixes, ("pp",))
    return [{"members": prefix, **scores[name]} for name, prefix in prefixes.items()]


#: the PCP forms the located F3 / F4 are measured with, and their keys' suffixes: the paper's
#: symmetric M, and the regression form (F3r / F4r)
FORMS: dict[PCPForm, str] = {"symmetric": "", "regression": "_regression"}


def _pcp_claims(
    c: ToyCtx, scan: BackdoorScan, trials: int, form: PCPForm, progress: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Claims 3 and 4 with one PCP form: the edit (rank search, keep and remove tunings) and
    the kept PCP scaled by Tab. V's factors."""
    keys = ROW_KEYS[c.k]
    # the sets without the trigger, held at their unedited scores (s+t carries the trigger too)
    others = {k: c.tokens[k] for k in keys if k != "pp" and "t" not in k}
    edit = scan.edit(inputs=others, n_trials=trials, seed=c.seed, form=form, progress=progress)
    keep, remove = edit.keep.replacement, edit.remove.replacement
    pcp = {
        "form": form,
        "modules": circuit_modules(scan.circuit, embed=True),
        "rank": edit.rank,
        "within_tolerance": edit.within_tolerance,
        "rank_search": [
            {k: round(float(v), 4) for k, v in r.items()}
            for r in edit.rank_search.to_dict("records")
        ],
        "keep": c.scores(keys, keep),
        "remove": c.scores(keys, remove),
    }
    scale = {}
    for f in paper.TAB5_FACTORS:
        rep = keep
        for site in keep.scales():
            rep = rep.scale(site, f)
        scale[str(f)] = c.scores(["pt", "pp", "nn", "np"], rep)
    return pcp, scale


def _ladder(n: int) -> list[int]:
    """F1n's prefix sizes: 1, 2, 4, ... units, and all ``n`` of them."""
    sizes = [1 << i for i in range(n.bit_length()) if 1 << i < n]
    return [*sizes, n]


def _unit_hooks(scan: BackdoorScan) -> dict[str, str]:
    """``{module: hook}`` of the circuit's units: an attention layer's heads (``hook_z``), an
    MLP's neurons (``hook_post``)."""
    out = {}
    for name in circuit_modules(scan.circuit):
        s = Site.parse(name)
        out[name] = _tl.hook_name("z" if s.kind == "attn" else "post", s.layer)
    return out


def unit_members(c: ToyCtx, scan: BackdoorScan) -> tuple[list[str], dict[str, Tensor]]:
    """The circuit split into units — each attention layer into its heads, each MLP into its
    neurons (``mlp0.n17``) — in the order of attribution patching's estimate of how far setting
    each unit to its p+p mean at the last position lowers p+t's metric (most first); and those
    means, per hook.

    One backward pass of the triggered pairs gives every unit's estimate
    ``Σ (mean − act)·∂metric/∂act`` (a head sums its ``d_head`` values), averaged over pairs.
    ``torch.autograd.grad`` leaves no gradient on the weights.
    """
    model = c.model
    hooks = {h: m for m, h in _unit_hooks(scan).items()}  # hook -> module
    _, cache = model.run_with_cache(c.tokens["pp"], names_filter=list(hooks))
    means = {h: cache[h][:, -1].mean(0).detach() for h in hooks}
    differ = (c.tokens["pt"] != c.tokens["pp"]).any(1)
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> Tensor:
        acts[hook.name] = act
        return act

    with torch.enable_grad(), model.hooks(fwd_hooks=[(h, keep) for h in hooks]):
        value = c.mass(model(c.tokens["pt"][differ]))
        grads = torch.autograd.grad(value, [acts[h] for h in hooks])
    names: list[str] = []
    estimates: list[Tensor] = []
    for (h, module), g in zip(hooks.items(), grads, strict=True):
        est = ((means[h] - acts[h][:, -1].detach()) * g[:, -1]).mean(0)
        prefix = "h" if module.startswith("attn") else "n"
        if prefix == "h":
            est = est.sum(-1)  # a head: all its d_head values
        names += [f"{module}.{prefix}{i}" for i in range(est.shape[0])]
        estimates.append(est)
    order = torch.argsort(torch.cat(estimates), stable=True).tolist()
    return [names[i] for i in order], means


def _unit_ablation(c: ToyCtx, scan: BackdoorScan) -> list[dict[str, Any]]:
    """Prefixes of :func:`unit_members` (1, 2, 4, ... units) set to p+p's mean at the last
    position: ``[{"size", "units": {module: count}, "first": [...], <set>_prob: ...}, ...]``."""
    units, means = unit_members(c, scan)
    hook_of = _unit_hooks(scan)
    rows = []
    for size in _ladder(len(units)):
        chosen: dict[str, list[int]] = {}
        for u in units[:size]:
            module, index = u.rsplit(".", 1)
            chosen.setdefault(hook_of[module], []).append(int(index[1:]))

        def put(act: Tensor, hook: Any, chosen: dict[str, list[int]] = chosen) -> Tensor:
            idx = chosen[hook.name]
            act = act.clone()
            act[:, -1, idx] = means[hook.name][idx].to(act.dtype)
            return act

        with c.model.hooks(fwd_hooks=[(h, put) for h in chosen]):
            scores = c.scores(["pt", "pp", "nn", "np"], val_loss=False)
        counts = {m: sum(u.startswith(f"{m}.") for u in units[:size]) for m in hook_of}
        rows.append({"size": size, "units": counts, "first": units[: min(size, 8)], **scores})
    return rows


def located_tables(
    c: ToyCtx, *, trials: int, progress: bool = False, freeze: bool = True
) -> dict[str, Any]:
    """Scan the poisoned model and measure the located claims 1–5 (module docstring).

    Args:
        c: the study's context of one model.
        trials: Optuna trials of each of the two tunings of the circuit's PCP.
        progress: show progress bars.
        freeze: run claim 5 (a second poisoning with the circuit frozen, and its scan).

    Returns:
        ``{"scan", "ablation", "head_ablation", "unit_ablation", "pcp", "scale", "pcp_regression",
        "scale_regression", "freezing", "seconds"}`` (JSON-ready); without a circuit only
        ``"scan"`` and ``"seconds"``.
    """
    t: dict[str, float] = {}
    s0 = time.perf_counter()
    scan = located_scan(c, progress=progress)
    t["scan"] = time.perf_counter() - s0
    out: dict[str, Any] = {"scan": _scan_record(scan, t["scan"])}
    if not scan.circuit:
        out["seconds"] = {k: round(v, 1) for k, v in t.items()}
        return out
    keys = ROW_KEYS[c.k]
    s0 = time.perf_counter()
    out["ablation"] = _joint_ablations(c, {"circuit": scan.circuit})["circuit"]
    out["head_ablation"] = _head_ablation(c, scan)
    out["unit_ablation"] = _unit_ablation(c, scan)
    t["ablation"] = time.perf_counter() - s0

    for form, suffix in FORMS.items():
        s0 = time.perf_counter()
        out[f"pcp{suffix}"], out[f"scale{suffix}"] = _pcp_claims(c, scan, trials, form, progress)
        t[f"pcp{suffix}"] = time.perf_counter() - s0

    if freeze:
        s0 = time.perf_counter()
        names = circuit_modules(scan.circuit, embed=True)
        cfg = dataclasses.replace(c.poisoned.result.config, progress=progress)
        run = poison(c.benign.model, c.data, cfg, freeze=names)
        again = dataclasses.replace(c, model=run.model, poisoned=run)
        rescan = located_scan(again, progress=progress)
        out["freezing"] = {
            "frozen": names,
            "steps": run.result.steps,
            "unfrozen_steps": c.poisoned.result.steps,
            "scores": again.scores(keys),
            "rescan": _scan_record(rescan, 0.0),
        }
        t["freezing"] = time.perf_counter() - s0
    out["seconds"] = {k: round(v, 1) for k, v in t.items()}
    return out
