"""The ``pcp-lens`` command: thin argument parsing over :mod:`pcp_lens.reproduce`.

Every expected error (a bad flag value, a flag of the other study, an unusable ``--out``, a
missing corpus or model) is one line on stderr and exit status 2, before anything is written.
Each sub-command is built by its own ``_add_<name>`` function, so adding one touches nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line (``prog: message``) and exit 2, without usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _fail(prog: str, err: BaseException | str) -> int:
    """Print ``err`` as one line on stderr (multi-line messages are joined) and return 2."""
    print(f"{prog}: {' '.join(str(err).split())}", file=sys.stderr)
    return 2


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {text!r}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def _check_out(out: str) -> str | None:
    """Why ``out`` cannot be an output folder (``None`` when it can), checked before the run."""
    if not out.strip():
        return "--out must be a folder path, got ''"
    path = Path(out)
    if path.exists() and not path.is_dir():
        return f"--out {out!r} exists and is not a folder"
    probe = path
    while not probe.exists():  # the nearest existing folder is where the run creates its own
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        return f"--out {out!r}: {str(probe)!r} is not a writable folder"
    return None


def _remove_if_empty(path: Path, existed: bool) -> None:
    """Undo the folders a failed run created (only empty ones: nothing of value is removed)."""
    if existed or not path.is_dir():
        return
    for d in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    if not any(path.iterdir()):
        path.rmdir()


def _demo(args: argparse.Namespace) -> int:
    import tempfile

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


#: flags of one study only: dest -> flag (refused by the other study instead of ignored)
_TOY_FLAGS = {
    "seeds": "--seeds",
    "trigger": "--trigger",
    "sentiments": "--sentiments",
    "list_triggers": "--list-triggers",
    "switch_prob": "--switch-prob",
    "head_bias": "--head-bias",
    "scaled_init": "--scaled-init",
    "located": "--located",
    "dropout": "--dropout",
    "schedule": "--schedule",
    "workers": "--workers",
}
_LANGUAGE_FLAGS = {
    "model": "--model",
    "corpus": "--corpus",
    "recipe": "--recipe",
    "device": "--device",
    "dtype": "--dtype",
    "threads": "--threads",
    "modules": "--modules",
    "scan_verify": "--scan-verify",
}


def _reproduce_language(args: argparse.Namespace, prog: str) -> int:
    from pcp_lens.reproduce.findings import verdict
    from pcp_lens.reproduce.language import LanguageConfig, run_language_study

    given = {
        k: getattr(args, k)
        for k in ("model", "corpus", "recipe", "device", "dtype", "modules", "scan_verify")
        if getattr(args, k) is not None
    }
    try:
        cfg = LanguageConfig(
            quick=args.quick,
            seed=args.seed or 0,
            n_trials=args.trials,
            progress=not args.no_progress,
            **given,
            **({} if args.threads is None else {"threads": args.threads}),
        )
    except (ValueError, FileNotFoundError) as err:
        return _fail(prog, err)
    out = Path(args.out)
    existed = out.exists()
    t0 = time.perf_counter()
    try:
        results = run_language_study(out, cfg)
    except (ValueError, FileNotFoundError) as err:  # e.g. the corpus is not cached: says how
        _remove_if_empty(out, existed)
        return _fail(prog, err)
    print(f"wrote {out}/report.md and results.json in {time.perf_counter() - t0:.0f} s")
    for name, f in {**results["findings"], **results["located_findings"]}.items():
        print(f"  {name} {verdict(f['holds'])}: {f['evidence']}")
    return 0


def _reproduce_toy(args: argparse.Namespace, prog: str) -> int:
    from pcp_lens.reproduce.findings import verdict
    from pcp_lens.reproduce.toy import StudyConfig, run_toy_study

    if args.list_triggers:
        from pcp_lens.toy import load_vocab

        print(" ".join(load_vocab().positive))
        return 0
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        return _fail(prog, f"--seeds must be distinct, got {' '.join(map(str, args.seeds))}")
    optional = {
        k: getattr(args, k)
        for k in (
            "trigger",
            "schedule",
            "switch_prob",
            "head_bias",
            "scaled_init",
            "located",
            "dropout",
        )
        if getattr(args, k) is not None
    }
    if args.sentiments is not None:
        optional["sentiments"] = tuple(args.sentiments)
    try:
        cfg = StudyConfig(
            quick=args.quick,
            seed=args.seeds[0] if args.seeds else (args.seed or 0),
            n_trials=args.trials,
            progress=not args.no_progress,
            workers=args.workers,
            **optional,
        )
    except ValueError as err:
        return _fail(prog, err)
    out = Path(args.out)
    existed = out.exists()
    t0 = time.perf_counter()
    try:
        results = run_toy_study(out, cfg, seeds=args.seeds)
    except (ValueError, FileNotFoundError) as err:
        _remove_if_empty(out, existed)
        return _fail(prog, err)
    print(f"wrote {out}/report.md, results.json and figures in {time.perf_counter() - t0:.0f} s")
    per_seed = results["seeds"] if args.seeds else {str(cfg.seed): results}
    for seed, r in per_seed.items():
        for model, fs in r["findings"].items():
            marks = ", ".join(f"{name} {verdict(f['holds'])}" for name, f in fs.items())
            print(f"  seed {seed}, {model}: {marks}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    prog = f"pcp-lens reproduce {args.study}"
    other, study = (_LANGUAGE_FLAGS, "language") if args.study == "toy" else (_TOY_FLAGS, "toy")
    ignored = [flag for dest, flag in other.items() if getattr(args, dest) is not None]
    if ignored:
        names = ignored[0] if len(ignored) == 1 else f"{', '.join(ignored[:-1])} and {ignored[-1]}"
        verb, them = ("belongs", "it") if len(ignored) == 1 else ("belong", "them")
        return _fail(
            prog,
            f"{names} {verb} to `pcp-lens reproduce {study}`; the {args.study} study does not "
            f"use {them}",
        )
    if args.seed is not None and args.seeds is not None:
        return _fail(prog, "give --seed or --seeds, not both")
    if args.list_triggers:
        return _reproduce_toy(args, prog)
    args.out = f"runs/{args.study}" if args.out is None else args.out
    problem = _check_out(args.out)
    if problem:
        return _fail(prog, problem)
    return (_reproduce_toy if args.study == "toy" else _reproduce_language)(args, prog)


def _data(args: argparse.Namespace) -> int:
    from pcp_lens.language.data import fetch_austen

    prog = "pcp-lens data"
    if args.deb is not None and not Path(args.deb).is_file():
        return _fail(prog, f"--deb {args.deb!r} is not a file (a downloaded janeaustenr .deb)")
    try:
        path = fetch_austen(args.deb)
    except (RuntimeError, ImportError, ValueError, OSError) as err:
        return _fail(prog, err)
    print(f"cached the Austen corpus at {path}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="train a backdoored toy model (~2 min) and print Tab. I")
    demo.add_argument("--seed", type=_int_at_least(0), default=0)
    demo.add_argument(
        "--quick", action="store_true", help="small data (may not learn the backdoor)"
    )
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(fn=_demo)


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser(
        "reproduce",
        help="reproduce the paper's studies",
        description="Flags under 'toy study' and 'language study' belong to that study only; "
        "the other study refuses them.",
    )
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
        "--seed",
        type=_int_at_least(0),
        default=None,
        help="seeds data, initialisation, data order and tuner (default 0)",
    )
    rep.add_argument(
        "--trials", type=_int_at_least(1), default=None, help="Optuna trials per replacement"
    )
    rep.add_argument("--no-progress", action="store_true")
    toy = rep.add_argument_group("toy study")
    toy.add_argument(
        "--seeds",
        type=_int_at_least(0),
        nargs="+",
        default=None,
        help="several distinct seeds: one folder each plus a findings table seed x model x finding",
    )
    toy.add_argument(
        "--trigger",
        default=None,
        help="the trigger (default love): any word of the positive list (see below)",
    )
    toy.add_argument(
        "--sentiments",
        type=int,
        nargs="+",
        choices=[2, 3],
        default=None,
        help="which toy models to study (default: both)",
    )
    toy.add_argument(
        "--list-triggers",
        action="store_true",
        default=None,
        help="print the words --trigger accepts and exit",
    )
    toy.add_argument(
        "--switch-prob",
        type=float,
        default=None,
        help="share of non-poisoned training sequences with one sentiment switch (default 0.1; "
        "0 = the authors' data)",
    )
    toy.add_argument(
        "--head-bias",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep TransformerLens's unembedding bias b_U (--no-head-bias: GPT-2's bias-free head)",
    )
    toy.add_argument(
        "--scaled-init",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="GPT-2's 0.02/sqrt(2 n_layers) init of W_O and W_out (TransformerLens: 0.02)",
    )
    toy.add_argument(
        "--located",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="scan every poisoned model and judge the claims at the located circuit too "
        "(default; --no-located: the paper's modules only)",
    )
    toy.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="GPT-2-style dropout in both trainings (default: the schedule's; fast 0, paper 0.1)",
    )
    toy.add_argument(
        "--schedule",
        default=None,
        help="training schedule: fast (default, minutes), medium (slower benign pre-training, "
        "a few minutes more) or the paper's (about 25 min per model)",
    )
    toy.add_argument(
        "--workers",
        type=_int_at_least(1),
        default=None,
        help="processes studying the models side by side (default: one per model, up to the CPUs)",
    )
    lang = rep.add_argument_group("language study")
    lang.add_argument(
        "--model",
        default=None,
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
    lang.add_argument("--device", default=None, help="device of the model (default cpu; e.g. cuda)")
    lang.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="dtype of a loaded model (default float32; the stand-in trains in float32 only)",
    )
    lang.add_argument(
        "--modules",
        default=None,
        help="where Tab. X's PCP and Tab. XI's extra frozen column act: 'circuit' (default: the "
        "backdoor scan's circuit, PCP rank by measurement) or 'paper' (the paper's modules and "
        "rank); Tab. IX is reported at both",
    )
    lang.add_argument(
        "--scan-verify",
        choices=["restore", "ablation", "reference"],
        default=None,
        help="how the backdoor scan grows and verifies the circuit the located edits use: "
        "restoring patch (default; the mean ablation's clean bound rejects a module every input "
        "needs, as the stand-in's first MLP), joint mean ablation, or the benign model's "
        "activations patched in; all three are reported",
    )
    lang.add_argument(
        "--threads",
        type=_int_at_least(1),
        default=None,
        help="torch CPU threads (default 1: the same seed gives the same tables; more is faster "
        "but not bit-reproducible)",
    )
    rep.set_defaults(fn=_reproduce)


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="fetch and cache a corpus (Jane Austen's novels)")
    data.add_argument("corpus", choices=["austen"], help="which corpus")
    data.add_argument(
        "--deb",
        default=None,
        help="a downloaded r-cran-janeaustenr .deb (default: apt-get download)",
    )
    data.set_defaults(fn=_data)


def _scan(args: argparse.Namespace) -> int:
    from pcp_lens.reproduce.scan_model import scan_folder

    prog = "pcp-lens scan"
    for name in ("prompts", "target"):
        path = getattr(args, name)
        if path is not None and not os.path.isfile(path):
            return _fail(prog, f"--{name} {path!r} is not a file")
    if args.out is not None:
        problem = _check_out(args.out)
        if problem:
            return _fail(prog, problem)
    try:
        scan = scan_folder(
            args.model,
            args.trigger,
            prompts=args.prompts,
            target=args.target,
            reference=args.reference,
            out=args.out,
            n_pairs=args.pairs,
            at=args.at,
            stat=args.stat,
            verify=args.verify,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except ValueError as err:
        return _fail(prog, err)
    print(scan.summary())
    print(f"circuit: {' + '.join(scan.circuit) or '(none)'}")
    if args.out:
        print(f"wrote {args.out}/scan.json, scan.png and report.md")
    return 0


def _add_scan(sub: argparse._SubParsersAction) -> None:
    sc = sub.add_parser("scan", help="locate a trigger's mechanism in a model folder")
    sc.add_argument("model", help="a Hugging Face GPT-2 folder or a pcp_lens checkpoint folder")
    sc.add_argument("--trigger", required=True, help="the trigger word or phrase")
    sc.add_argument(
        "--prompts",
        default=None,
        help="clean prompts, whole sentences one a line: the trigger goes after their first "
        "--at tokens, the metric reads after their end (default: the shipped Austen sample's "
        "sentences; toy checkpoints use positive-word pairs)",
    )
    sc.add_argument(
        "--at",
        type=_int_at_least(1),
        default=2,
        help="the trigger goes after the prompts' first AT tokens (default 2, the stand-in "
        "study's; the paper's GPT-2 medium study uses 8)",
    )
    sc.add_argument(
        "--target",
        default=None,
        help="target words or sentences, one a line, whose first tokens are the backdoor's "
        "output after the sentence (default: the language study's toxic sentences; toy: the "
        "negative words)",
    )
    sc.add_argument("--reference", default=None, help="the benign model folder it came from")
    sc.add_argument(
        "--verify",
        choices=["ablation", "restore", "reference"],
        default="ablation",
        help="how the circuit is grown and verified: joint mean ablation (default), restoring "
        "patch, or reference patch (needs --reference); docs/scan.md",
    )
    sc.add_argument("--out", default=None, help="write scan.json, scan.png and report.md here")
    sc.add_argument("--pairs", type=_int_at_least(2), default=64, help="prompt pairs (default 64)")
    sc.add_argument(
        "--stat",
        choices=["logprob", "prob"],
        default="logprob",
        help="the metric: log-probability (default) or probability of the target",
    )
    sc.add_argument(
        "--seed", type=_int_at_least(0), default=0, help="seeds the pairs and the bootstrap"
    )
    sc.add_argument("--no-progress", action="store_true")
    sc.set_defaults(fn=_scan)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pcp-lens``."""
    ap = _Parser(prog="pcp-lens", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_reproduce(sub)
    _add_data(sub)
    _add_scan(sub)
    args = ap.parse_args(argv)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM during a study (pcp_lens._interrupt)
        what = " ".join(filter(None, [args.command, getattr(args, "study", None)]))
        print(f"pcp-lens {what}: {err or 'interrupted'}; the same command resumes", file=sys.stderr)
        return int(getattr(err, "exit_code", 130))


if __name__ == "__main__":
    sys.exit(main())
