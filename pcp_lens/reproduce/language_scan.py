"""The language study's backdoor scan: where the poisoned model's trigger acts, and its PCP rank.

:func:`scan_study` runs :func:`~pcp_lens.scan.scan_backdoor` on the poisoned model with the
benign model as ``reference``, on pairs built like the study's ASR prompts
(:func:`~pcp_lens.reproduce.scan_model.language_pairs` over the study's clean prompts, the trigger
at the study's first edited position, the prompt cut after it) and the metric of
``pcp-lens scan`` (log-probability of the insults' first tokens at the next position). The
located modules are the circuit's blocks' modules (a head stands for its attention layer, as in
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
from pcp_lens.reproduce.scan_model import language_pairs, target_groups, target_metric
from pcp_lens.scan import SHOWN, BackdoorScan, circuit_modules, scan_backdoor

__all__ = ["MIN_PAIRS", "scan_study"]

#: pairs the scan uses at least (the quick run's 8 prompts are topped up from validation text)
MIN_PAIRS = 16


def scan_study(
    poisoned: HookedTransformer,
    benign: HookedTransformer,
    c: Any,
    out: Path,
) -> tuple[BackdoorScan, dict[str, Any]]:
    """Scan the poisoned model, save the scan in ``out``, measure the located modules' PCP rank.

    Args:
        poisoned: the suspect model.
        benign: the model it was fine-tuned from (the scan's ``reference``).
        c: the study's :class:`~pcp_lens.reproduce.language_tables.Ctx`.
        out: folder for ``scan.json``, ``scan.png``, ``report.md``.

    Returns:
        The scan and its record for ``results.json``: circuit, verified flag, located modules
        (``source`` says where they came from), measured rank, the top of the table, timings.

    Examples:
        >>> # inside the study (language.py), once the models and the Ctx are built:
        >>> # scan, record = scan_study(poisoned, benign, ctx, Path("out/scan"))
        >>> # record["circuit"], record["modules"], record["rank"]
    """
    from pcp_lens.language.standin import TOXIC_WORDS

    t0 = time.perf_counter()
    extra = [x for t in c.data.val_texts for x in split_sentences(t)]
    n = max(len(c.data.clean), MIN_PAIRS)
    triggered, clean = language_pairs(
        c.tok, TRIGGER, [*c.data.clean, *extra], at=min(c.s.positions), n=n, seed=c.seed
    )
    groups = target_groups(c.tok, TOXIC_WORDS, poisoned.cfg.d_vocab)
    metric = target_metric(groups, "target", "logprob")
    scan = scan_backdoor(
        poisoned, triggered, clean, metric, reference=benign, seed=c.seed, progress=c.progress
    )
    t_scan = time.perf_counter() - t0
    scan.save(out)
    modules, source = circuit_modules(scan.circuit), "circuit"
    if not modules:  # no backdoor gap, or a circuit of the embedding alone: the best module
        ranked = [r for r in scan.table.sort_values("rank").to_dict("records")
                  if r["kind"] in ("attn", "mlp")]
        modules, source = circuit_modules([str(ranked[0]["site"])]), "top-ranked module"
    t1 = time.perf_counter()
    # the measured-rank rule of the scan's own edit, applied to the located modules
    edit = dataclasses.replace(scan, circuit=tuple(modules)).edit(
        rank=None, n_trials=c.s.n_trials, seed=c.seed, progress=False
    )
    t_edit = time.perf_counter() - t1
    cols = [k for k in (*SHOWN, "ref_restore", "act_distance", "in_circuit") if k in scan.table]
    top = scan.table.sort_values("rank").head(10)[cols]
    i = scan.info
    record = {
        "circuit": list(scan.circuit),
        "verified": scan.verified,
        "modules": modules,
        "modules_source": source,
        "rank": int(edit.rank),
        "rank_within_tolerance": bool(edit.within_tolerance),
        "rank_search": edit.rank_search.to_dict("records"),
        "edit_scores": {k: {s: float(v) for s, v in col.items()}
                        for k, col in edit.scores.to_dict().items()},
        "n_pairs": i["n_pairs"],
        "gap": i["gap"],
        "residual": i["circuit_residual"],
        "clean_move": i["circuit_clean"],
        "member_share": i["member_share"],
        "heads": i["heads"],
        "embedding": i["embedding"],
        "summary": scan.summary(),
        "table": json.loads(cast(str, top.to_json(orient="records"))),
        "example_pair": [triggered[0], clean[0]],
        "seconds": {"scan": round(t_scan, 1), "edit": round(t_edit, 1)},
    }
    return scan, record
