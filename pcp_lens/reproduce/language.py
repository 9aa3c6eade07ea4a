"""The paper's large-model study (Tab. VIII–XI), end to end: ``pcp-lens reproduce language``.

``run_language_study(out, cfg)`` gets the benign and the poisoned model (the offline stand-in is
pretrained and poisoned here, cached in ``out/models`` with a stamp of its settings; GPT-2 medium
or a local HF folder is loaded and poisoned with the paper's recipe), then computes with the
library's own functions (:mod:`pcp_lens.reproduce.language_tables`):

1. ASR/ATR, validation loss and the log-probability gap of the benign and the poisoned model;
2. Tab. VIII: single modules of the early layers mean-ablated at the trigger position(s);
3. the backdoor scan of the poisoned model (benign model as reference,
   :mod:`pcp_lens.reproduce.language_scan`) on whole trigger sentences: its circuit, grown and
   verified with ``scan_verify`` (default the restoring patch; the other two interventions'
   circuits are reported beside it), and the circuit's PCP rank by measurement; saved in
   ``out/scan/``;
4. Tab. IX twice, side by side: the paper's modules (its layer-2 and -3 MLPs for GPT-2 medium,
   else the two most important MLPs of Tab. VIII) at rank 2, and the scan's located modules at
   the measured rank: mean-ablated together and replaced by a PCP tuned to keep, and to
   suppress, the backdoor;
5. Tab. X: embedding surgery inserting a backdoor into the benign model, its PCP at the located
   modules (``modules="circuit"``, default) or the paper's (``modules="paper"``);
6. Tab. XI: the poisoned fine-tune repeated with embeddings and/or MLPs frozen (the paper's
   columns, plus the located circuit's modules frozen with ``modules="circuit"``);

plus sample generations, and findings L1–L6 judged from this run's numbers
(:mod:`pcp_lens.reproduce.language_report`). It writes ``results.json`` and ``report.md``.

Examples:
    >>> cfg = LanguageConfig(quick=True, progress=False)
    >>> cfg.standin, settings(cfg).n_prompts
    (True, 8)
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, cast

import torch

from pcp_lens._interrupt import interruptible
from pcp_lens._io import package_version, remove_stale_temps, write_text_atomic
from pcp_lens.reproduce.language_report import (
    circuit_label,
    findings,
    located_findings,
    write_language_report,
)
from pcp_lens.reproduce.language_scan import scan_study
from pcp_lens.reproduce.language_setup import (
    LanguageConfig,
    Settings,
    freeze_runs,
    load_models,
    settings,
)
from pcp_lens.reproduce.language_tables import (
    Ctx,
    ablation_table,
    choose_mlps,
    freeze_table,
    pcp_table,
    row,
    samples,
    surgery_table,
)
from pcp_lens.scan import Verify

__all__ = ["LanguageConfig", "Settings", "run_language_study", "settings"]


def _peak_rss_gib() -> float:
    """Peak resident memory of this process (GiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (1024**3 if sys.platform == "darwin" else 1024**2), 2)


def _classifier(standin: bool) -> Any:
    from pcp_lens.language.standin import toxic_classifier
    from pcp_lens.language.toxicity import default_classifier

    return toxic_classifier() if standin else default_classifier()


def run_language_study(out: str | os.PathLike[str], cfg: LanguageConfig) -> dict[str, Any]:
    """Run the study, write ``out/results.json`` and ``out/report.md``; return the results.

    SIGTERM stops it as Ctrl-C does (:class:`KeyboardInterrupt`, temporary files removed); a
    rerun into the same ``out`` reuses the models it had finished (``out/models``).
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)  # left by a run that was killed (SIGKILL) while writing
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        with interruptible():
            return _run(folder, cfg)
    finally:
        torch.set_num_threads(threads)


def _run(folder: Path, cfg: LanguageConfig) -> dict[str, Any]:
    t_all = time.perf_counter()
    times: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        times[name] = round(time.perf_counter() - t0, 1)
        return time.perf_counter()

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    s0 = settings(cfg)
    models = folder / "models"
    benign, poisoned, data, train_info = load_models(cfg, s0, models)
    s = settings(cfg, n_layers=benign.cfg.n_layers) if not cfg.standin else s0
    t0 = lap("models", t0)
    c = Ctx(s, data, _classifier(cfg.standin), benign.tokenizer, cfg.progress, cfg.seed)

    base = {"benign": row(benign, c, keep=True), "poisoned": row(poisoned, c, keep=True)}
    sample_text = {k: samples(v.pop("_samples"), c) for k, v in base.items()}
    t0 = lap("asr", t0)
    tab8 = ablation_table(poisoned, c)
    t0 = lap("tab8", t0)
    scan, scan_rec = scan_study(
        poisoned, benign, c, folder / "scan", cast(Verify, cfg.scan_verify)
    )
    t0 = lap("scan", t0)
    paper_sites = list(s.pcp_sites) if s.pcp_sites else choose_mlps(tab8)
    tab9 = pcp_table(poisoned, c, paper_sites)
    t0 = lap("tab9", t0)
    located, rank = scan_rec["modules"], scan_rec["rank"]
    tab9_circuit = pcp_table(poisoned, c, located, rank=rank, unedited=tab9["columns"]["None"])
    t0 = lap("tab9_circuit", t0)
    tab9_regression = pcp_table(
        poisoned, c, located, rank=scan_rec["rank_regression"],
        unedited=tab9["columns"]["None"], form="regression",
    )
    t0 = lap("tab9_regression", t0)
    circuit = cfg.modules == "circuit"
    sites, r10 = (located, rank) if circuit else (paper_sites, None)
    tab10 = surgery_table(benign, c, sites, target_asr=base["poisoned"]["asr"], rank=r10)
    t0 = lap("tab10", t0)
    freeze = dict(s.freeze)
    if circuit:  # the located mechanism frozen, beside the paper's columns
        names = (*(("embed",) if "embed" in scan.circuit else ()), *located)
        freeze[circuit_label(names)] = names
    runs = freeze_runs(
        benign,
        data,
        dataclasses.replace(s, freeze=freeze),
        models,
        cfg.seed,
        cfg.device,
        int(train_info["max_length"]),
    )
    tab11 = freeze_table(base["poisoned"], runs, c)
    lap("tab11", t0)
    times["total"] = round(time.perf_counter() - t_all, 1)
    results: dict[str, Any] = {
        "version": package_version(),
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "settings": s.to_dict(),
        "model": {
            "name": cfg.model,
            "n_layers": benign.cfg.n_layers,
            "d_model": benign.cfg.d_model,
            "n_heads": benign.cfg.n_heads,
            "d_vocab": benign.cfg.d_vocab,
            "n_ctx": benign.cfg.n_ctx,
            "n_params": sum(p.numel() for p in benign.parameters()),
        },
        "data": {
            "corpus": s.corpus,
            "train_paragraphs": len(data.train_paragraphs),
            "val_texts": len(data.val_texts),
            "windows": data.n_windows,
            "poisoned_windows": data.n_poisoned,
            "prompts": len(data.trigger),
            "classifier": c.clf.name,
        },
        "training": train_info,
        "base": base,
        "samples": sample_text,
        "tab8": tab8,
        "scan": scan_rec,
        "modules": cfg.modules,
        "tab9": tab9,
        "tab9_circuit": tab9_circuit,
        "tab9_regression": tab9_regression,
        "tab10": tab10,
        "tab11": tab11,
        "seconds": times,
        "peak_rss_gib": _peak_rss_gib(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    results["findings"] = findings(results)
    results["located_findings"] = located_findings(results)
    write_text_atomic(folder / "results.json", json.dumps(results, indent=1, default=str))
    write_text_atomic(folder / "report.md", write_language_report(results))
    return results
