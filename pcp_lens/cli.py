"""The ``pcp-lens`` command: thin argument parsing over :mod:`pcp_lens.reproduce`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    import pandas as pd
    import torch

    from pcp_lens.reproduce.toy import StudyConfig, _context, mean_ablation_table

    torch.set_num_threads(1)  # the toy model is too small to gain from threads
    t0 = time.perf_counter()
    cfg = StudyConfig(quick=args.quick, seed=args.seed, progress=not args.no_progress)
    with tempfile.TemporaryDirectory() as tmp:
        c, _ = _context(2, cfg, Path(tmp))
    print(
        f"trained a 2-sentiment toy model and backdoored it with the trigger 'love' in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print("\ntop-10 negativity of the next word (mean over held-out two-word inputs):")
    print(pd.Series(c.scores(list(c.tokens))).round(2).to_string())
    t1 = mean_ablation_table(c, cfg)
    table = pd.DataFrame(
        {"attn": t1["attn"], "mlp": t1["mlp"]}, index=[f"L{i + 1}" for i in range(len(t1["attn"]))]
    )
    print(
        f"\nTab. I: p+t negativity with one module mean-ablated (unchanged: {t1['unchanged']:.2f})"
    )
    print(table.round(2).to_string())
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from pcp_lens.reproduce.toy import StudyConfig, run_toy_study

    cfg = StudyConfig(
        quick=args.quick,
        seed=args.seed,
        n_trials=args.trials,
        progress=not args.no_progress,
        schedule=args.schedule,
        workers=args.workers,
    )
    t0 = time.perf_counter()
    results = run_toy_study(args.out, cfg)
    print(
        f"wrote {args.out}/report.md, results.json and figures in {time.perf_counter() - t0:.0f} s"
    )
    for name, f in results["findings"].items():
        mark = {True: "holds", False: "does NOT hold", None: "not evaluated"}[f["holds"]]
        print(f"  {name}: {mark}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pcp-lens``."""
    ap = argparse.ArgumentParser(prog="pcp-lens", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a backdoored toy model (~2 min) and print Tab. I")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--quick", action="store_true", help="small data (may not learn the backdoor)"
    )
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(fn=_demo)
    rep = sub.add_parser("reproduce", help="reproduce the paper's studies")
    rep.add_argument("study", choices=["toy"], help="which study (the toy models)")
    rep.add_argument("--out", default="runs/toy", help="output folder (default runs/toy)")
    rep.add_argument("--quick", action="store_true", help="small data and few trials (~3 min)")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--trials", type=int, default=None, help="Optuna trials per replacement")
    rep.add_argument(
        "--schedule",
        choices=["fast", "paper"],
        default="fast",
        help="training schedule: fast (default, minutes) or the paper's (about 25 min per model)",
    )
    rep.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes studying the models side by side (default: one per model, up to the CPUs)",
    )
    rep.add_argument("--no-progress", action="store_true")
    rep.set_defaults(fn=_reproduce)
    args = ap.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
