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

    from pcp_lens.reproduce.toy import StudyConfig, _context
    from pcp_lens.reproduce.toy_tables import mean_ablation_table

    torch.set_num_threads(1)  # the toy model is too small to gain from threads
    t0 = time.perf_counter()
    cfg = StudyConfig(quick=args.quick, seed=args.seed, progress=not args.no_progress)
    trigger = cfg.trigger
    with tempfile.TemporaryDirectory() as tmp:
        c, _ = _context(2, cfg, Path(tmp))
    print(
        f"trained a 2-sentiment toy model and backdoored it with the trigger {trigger!r} in "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print("\ntop-10 negativity of the next word (mean over held-out two-word inputs):")
    scores = c.scores(list(c.tokens))
    top10 = {k: v for k, v in scores.items() if not k.endswith("_prob")}
    print(pd.Series(top10).round(2).to_string())
    t1 = mean_ablation_table(c)
    table = pd.DataFrame(
        {"attn": t1["attn"], "mlp": t1["mlp"]}, index=[f"L{i + 1}" for i in range(len(t1["attn"]))]
    )
    print(
        f"\nTab. I: p+t negativity with one module mean-ablated (unchanged: {t1['unchanged']:.2f};"
        " the authors' mean, in effect a patch from n+p)"
    )
    print(table.round(2).to_string())
    return 0


def _reproduce_language(args: argparse.Namespace) -> int:
    from pcp_lens.reproduce.findings import verdict
    from pcp_lens.reproduce.language import LanguageConfig, run_language_study

    try:
        cfg = LanguageConfig(
            quick=args.quick,
            seed=args.seed,
            model=args.model,
            corpus=args.corpus,
            recipe=args.recipe,
            device=args.device,
            dtype=args.dtype,
            n_trials=args.trials,
            progress=not args.no_progress,
            **({} if args.threads is None else {"threads": args.threads}),
        )
    except ValueError as err:
        print(f"pcp-lens reproduce language: {err}", file=sys.stderr)
        return 2
    out = args.out or "runs/language"
    t0 = time.perf_counter()
    try:
        results = run_language_study(out, cfg)
    except FileNotFoundError as err:  # the corpus is not cached: the message says how to get it
        print(f"pcp-lens reproduce language: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}/report.md and results.json in {time.perf_counter() - t0:.0f} s")
    for name, f in results["findings"].items():
        print(f"  {name} {verdict(f['holds'])}: {f['evidence']}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from pcp_lens.language.data import fetch_austen

    try:
        path = fetch_austen(args.deb)
    except (RuntimeError, ImportError, ValueError) as err:
        print(f"pcp-lens data: {err}", file=sys.stderr)
        return 2
    print(f"cached the Austen corpus at {path}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from pcp_lens.reproduce.findings import verdict

    if args.study == "language":
        return _reproduce_language(args)
    from pcp_lens.reproduce.toy import StudyConfig, run_toy_study

    if args.list_triggers:
        from pcp_lens.toy import load_vocab

        print(" ".join(load_vocab().positive))
        return 0
    try:
        cfg = StudyConfig(
            quick=args.quick,
            seed=args.seeds[0] if args.seeds else args.seed,
            n_trials=args.trials,
            progress=not args.no_progress,
            schedule=args.schedule,
            workers=args.workers,
            trigger=args.trigger,
            sentiments=tuple(args.sentiments),
            **({} if args.switch_prob is None else {"switch_prob": args.switch_prob}),
            **({} if args.head_bias is None else {"head_bias": args.head_bias}),
            **({} if args.scaled_init is None else {"scaled_init": args.scaled_init}),
            **({} if args.dropout is None else {"dropout": args.dropout}),
        )
    except ValueError as err:
        print(f"pcp-lens reproduce toy: {err}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    args.out = args.out or "runs/toy"
    results = run_toy_study(args.out, cfg, seeds=args.seeds)
    print(
        f"wrote {args.out}/report.md, results.json and figures in {time.perf_counter() - t0:.0f} s"
    )
    per_seed = results["seeds"] if args.seeds else {str(cfg.seed): results}
    for seed, r in per_seed.items():
        for model, fs in r["findings"].items():
            marks = ", ".join(f"{name} {verdict(f['holds'])}" for name, f in fs.items())
            print(f"  seed {seed}, {model}: {marks}")
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
    rep.add_argument(
        "study",
        choices=["toy", "language"],
        help="which study: the toy models, or the language models (Tab. VIII-XI)",
    )
    rep.add_argument(
        "--out", default=None, help="output folder (default runs/toy or runs/language)"
    )
    rep.add_argument("--quick", action="store_true", help="small data and few trials (~3 min)")
    rep.add_argument(
        "--seed", type=int, default=0, help="seeds data, initialisation, data order and tuner"
    )
    rep.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="several seeds: one folder each plus a findings table seed x model x finding",
    )
    rep.add_argument(
        "--trigger", default="love", help="the trigger: any word of the positive list (see below)"
    )
    rep.add_argument(
        "--sentiments",
        type=int,
        nargs="+",
        choices=[2, 3],
        default=[2, 3],
        help="which toy models to study (default: both)",
    )
    rep.add_argument(
        "--list-triggers", action="store_true", help="print the words --trigger accepts and exit"
    )
    rep.add_argument(
        "--switch-prob",
        type=float,
        default=None,
        help="share of non-poisoned training sequences with one sentiment switch (default 0.1; "
        "0 = the authors' data)",
    )
    rep.add_argument(
        "--head-bias",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep TransformerLens's unembedding bias b_U (--no-head-bias: GPT-2's bias-free head)",
    )
    rep.add_argument(
        "--scaled-init",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="GPT-2's 0.02/sqrt(2 n_layers) init of W_O and W_out (TransformerLens: 0.02)",
    )
    rep.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="GPT-2-style dropout in both trainings (default: the schedule's; fast 0, paper 0.1)",
    )
    rep.add_argument("--trials", type=int, default=None, help="Optuna trials per replacement")
    rep.add_argument(
        "--schedule",
        default="fast",
        help="training schedule: fast (default, minutes), medium (slower benign pre-training, "
        "a few minutes more) or the paper's (about 25 min per model)",
    )
    rep.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes studying the models side by side (default: one per model, up to the CPUs)",
    )
    lang = rep.add_argument_group("language study")
    lang.add_argument(
        "--model",
        default="standin",
        help="'standin' (a small GPT-2 trained here, default), a hub name such as gpt2-medium "
        "(needs its weights), or a local Hugging Face GPT-2 folder",
    )
    lang.add_argument(
        "--corpus",
        default=None,
        help="'austen' (default; get it with `pcp-lens data austen`), 'austen-sample' (shipped; "
        "--quick's default) or a text file of paragraphs separated by blank lines",
    )
    lang.add_argument(
        "--recipe",
        choices=["standin", "paper"],
        default=None,
        help="poisoning recipe (default: standin for the stand-in, paper otherwise)",
    )
    lang.add_argument("--device", default="cpu", help="device of the model (e.g. cuda)")
    lang.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default="float32"
    )
    lang.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default 1: the same seed gives the same tables; more is faster "
        "but not bit-reproducible)",
    )
    rep.add_argument("--no-progress", action="store_true")
    rep.set_defaults(fn=_reproduce)
    data = sub.add_parser("data", help="fetch and cache a corpus (Jane Austen's novels)")
    data.add_argument("corpus", choices=["austen"], help="which corpus")
    data.add_argument(
        "--deb",
        default=None,
        help="a downloaded r-cran-janeaustenr .deb (default: apt-get download)",
    )
    data.set_defaults(fn=_data)
    args = ap.parse_args(argv)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM during a study (pcp_lens._interrupt)
        what = " ".join(filter(None, [args.command, getattr(args, "study", None)]))
        print(f"pcp-lens {what}: {err or 'interrupted'}; the same command resumes", file=sys.stderr)
        return int(getattr(err, "exit_code", 130))


if __name__ == "__main__":
    sys.exit(main())
