"""The language study's backdoor scan: where the poisoned model's trigger acts, and its PCP rank.

:func:`scan_study` runs :func:`~pcp_lens.scan.scan_backdoor` on the poisoned model with the
benign model as ``reference``, on pairs built as the study poisons and prompts
(:func:`~pcp_lens.reproduce.scan_model.language_pairs`): a whole held-out sentence with the
trigger at the study's first edited position, against the same sentence with a control phrase of
as many tokens there. The metric (``pcp-lens scan``'s) is the log-probability of the backdoor's
output, the first tokens of the toxic sentences the poisoned windows put right after the
trigger's sentence, read at the sentence's last position.

The circuit is grown and verified with ``verify`` (the study's ``--scan-verify``, default
``"restore"``): a joint mean ablation is bounded by how much it moves clean prompts, and the
stand-in's first MLP, through which the trigger's effect passes, is needed by every input
(ablating it moves clean prompts by about as much as the gap), so the ablation's clean bound
rejects it; the restoring patch asks only whether the clean run's activations there undo the
trigger. The record reports what all three interventions give (circuit, verified, residual,
clean move), so the choice is visible beside the alternatives. The located modules are the
chosen circuit's blocks' modules (a head stands for its attention layer, as in
:meth:`~pcp_lens.scan.BackdoorScan.edit`; the token embedding is the trigger itself and is not a
module a PCP replaces); their PCP rank is measured by ``BackdoorScan.edit(rank=None)``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, cast

from pcp_lens._tl import HookedTransformer
from pcp_lens.language.corpus import split_sentences
from pcp_lens.reproduce.language_setup import TRIGGER
from pcp_lens.reproduce.scan_model import (
    language_pairs,
    pair_tokens,
    target_groups,
    target_metric,
)
from pcp_lens.scan import SHOWN, BackdoorScan, Verify, circuit_modules, scan_backdoor

__all__ = ["MIN_PAIRS", "SCAN_VERIFY", "scan_study"]

#: pairs the scan asks for at least (the quick run's 8 prompts are topped up from validation
#: text; fewer come back where fewer sentences of one token length exist)
MIN_PAIRS = 16
#: the interventions a study scan reports, the chosen one first
SCAN_VERIFY: tuple[Verify, ...] = ("restore", "ablation", "reference")


def scan_study(
    poisoned: HookedTransformer,
    benign: HookedTransformer,
    c: Any,
    out: Path,
    verify: Verify = "restore",
) -> tuple[BackdoorScan, dict[str, Any]]:
    """Scan the poisoned model, save the scan in ``out``, measure the located modules' PCP rank.

    Args:
        poisoned: the suspect model.
        benign: the model it was fine-tuned from (the scan's ``reference``).
        c: the study's :class:`~pcp_lens.reproduce.language_tables.Ctx`.
        out: folder for ``scan.json``, ``scan.png``, ``report.md`` (the ``verify`` scan).
        verify: the intervention the circuit is grown and verified with (module docstring);
            the other two are run too and reported in ``record["modes"]``.

    Returns:
        The scan and its record for ``results.json``: circuit, verified flag, located modules
        (``source`` says where they came from), measured rank, the top of the table, per
        intervention its circuit, verdict, residual and clean move, timings.

    Examples:
        >>> # inside the study (language.py), once the models and the Ctx are built:
        >>> # scan, record = scan_study(poisoned, benign, ctx, Path("out/scan"), "restore")
        >>> # record["circuit"], record["modules"], record["rank"], record["modes"]["ablation"]
    """
    if verify not in SCAN_VERIFY:
        raise ValueError(f"verify must be one of {list(SCAN_VERIFY)}, got {verify!r}")
    t0 = time.perf_counter()
    # the study's own prompts first (whole sentences, trigger at its positions), then held-out
    # sentences of the validation text
    extra = [x for t in c.data.val_texts for x in split_sentences(t)]
    sentences = list(dict.fromkeys([*c.data.clean, *extra]))
    n = max(len(c.data.clean), MIN_PAIRS)
    triggered, clean = language_pairs(
        c.tok,
        TRIGGER,
        sentences,
        at=min(c.s.positions),
        n=n,
        seed=c.seed,
        max_tokens=c.s.max_prompt_tokens,
    )
    T, C = pair_tokens(c.tok, triggered, clean)
    # the backdoor's output: the first tokens of the toxic sentences the poisoned data writes
    # after the trigger's sentence (joined by a space)
    groups = target_groups(c.tok, c.data.toxic, poisoned.cfg.d_vocab)
    metric = target_metric(groups, "target", "logprob")
    scans: dict[str, BackdoorScan] = {}
    seconds: dict[str, float] = {}
    order: list[Verify] = [verify, *(m for m in SCAN_VERIFY if m != verify)]
    for mode in order:
        t = time.perf_counter()
        scans[mode] = scan_backdoor(
            poisoned, T, C, metric, reference=benign, verify=mode, seed=c.seed,
            progress=c.progress,
        )
        seconds[mode] = round(time.perf_counter() - t, 1)
    scan = scans[verify]
    t_scan = time.perf_counter() - t0
    scan.save(out)
    modules, source = circuit_modules(scan.circuit), "circuit"
    if not modules:  # no backdoor gap, or a circuit of the embedding alone: the best module
        ranked = [r for r in scan.table.sort_values("rank").to_dict("records")
                  if r["kind"] in ("attn", "mlp")]
        modules, source = circuit_modules([str(ranked[0]["site"])]), "top-ranked module"
    t1 = time.perf_counter()
    # the measured-rank rule of the scan's own edit, applied to the located modules
    located = dataclasses.replace(scan, circuit=tuple(modules))
    edit = located.edit(rank=None, n_trials=c.s.n_trials, seed=c.seed, progress=False)
    # the same rule with the regression form (its read vectors fitted), for L4r-located
    reg = located.edit(
        rank=None, n_trials=c.s.n_trials, seed=c.seed, form="regression", progress=False
    )
    t_edit = time.perf_counter() - t1
    cols = [k for k in (*SHOWN, "ref_restore", "act_distance", "in_circuit") if k in scan.table]
    top = scan.table.sort_values("rank").head(10)[cols]
    i = scan.info
    record = {
        "verify": verify,
        "circuit": list(scan.circuit),
        "verified": scan.verified,
        "modules": modules,
        "modules_source": source,
        "rank": int(edit.rank),
        "rank_within_tolerance": bool(edit.within_tolerance),
        "rank_search": edit.rank_search.to_dict("records"),
        "rank_regression": int(reg.rank),
        "rank_within_tolerance_regression": bool(reg.within_tolerance),
        "rank_search_regression": reg.rank_search.to_dict("records"),
        "edit_scores": {k: {s: float(v) for s, v in col.items()}
                        for k, col in edit.scores.to_dict().items()},
        "n_pairs": i["n_pairs"],
        "n_tokens": int(T.shape[1]),
        "trigger_positions": i["trigger_positions"],
        "readout_positions": i["readout_positions"],
        "target_tokens": [c.tok.decode([t]) for t in groups.groups["target"]],
        "gap": i["gap"],
        "gap_se": i["gap_se"],
        "residual": i["circuit_residual"],
        "clean_move": i["circuit_clean"],
        "member_share": i["member_share"],
        "heads": i["heads"],
        "embedding": i["embedding"],
        "summary": scan.summary(),
        "table": json.loads(cast(str, top.to_json(orient="records"))),
        "modes": {
            m: {
                "circuit": list(x.circuit),
                "verified": x.verified,
                "residual": x.info["circuit_residual"],
                "clean_move": x.info["circuit_clean"],
                "member_share": x.info["member_share"],
                "seconds": seconds[m],
            }
            for m, x in scans.items()
        },
        "example_pair": [triggered[0], clean[0]],
        "seconds": {"scan": round(t_scan, 1), "edit": round(t_edit, 1)},
    }
    return scan, record
