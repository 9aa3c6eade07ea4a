"""PCP benchmarks: Optuna tuning speed on the toy model, and the cost of a PCP-ablated forward.

1. Tuning: 500 trials on a toy-shaped model (3 layers, d_model 64, 4 heads, d_mlp 256,
   d_vocab 800) with 13 input sets × 50 two-token inputs, rank-2 PCP on ``mlp0`` and ``mlp2``.
   Target: under a minute on 2 CPU cores.
2. Forward cost: a GPT-2-small-shaped random model (12 layers, d_model 768, d_vocab 50257),
   batch 8 × 128 tokens, plain forward vs the same forward with PCP hooks (the paper's two MLPs,
   and all 24 modules as a worst case), timed interleaved in one run. Target: ≤ 1.1×.

Run: ``python benchmarks/bench_pcp.py [--threads N] [--trials 500] [--reps 7] [--skip-tune]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pcp_lens.groups import GroupMetric, TokenGroups
from pcp_lens.pcp import fit_pcp
from pcp_lens.testing import gpt2_small_shaped, tiny_model
from pcp_lens.tuning import _metrics, _SetBatch, tune


def bench_tuning(n_trials: int) -> None:
    """Time ``tune`` on the toy shape; also one batched evaluation on its own."""
    model = tiny_model(n_layers=3, d_model=64, n_heads=4, d_vocab=800, seed=0)
    g = torch.Generator().manual_seed(0)
    keys = ["pp", "nn", "ss", "pn", "np", "ps", "sp", "pt", "tp", "nt", "tn", "st", "ts"]
    sets = {k: torch.randint(1, 800, (50, 2), generator=g) for k in keys}
    groups = TokenGroups(
        {"negative": range(1, 250), "positive": range(250, 500), "neutral": range(500, 750)},
        d_vocab=800,
    )
    neg = GroupMetric(groups, "negative", k=10, positions=(-1,))
    fit_sets = ["pp", "nn", "pn", "np", "pt", "tp", "ss", "st"]  # METHODS §8.1
    t0 = time.perf_counter()
    pcp = fit_pcp(
        model,
        torch.cat([sets[k] for k in fit_sets]),
        ["mlp0", "mlp2"],
        2,
        positions=[1],
        progress=False,
    )
    t_fit = time.perf_counter() - t0

    metrics, single = _metrics(neg)
    batch = _SetBatch(model, sets, metrics, single, 0)
    hooks = pcp.hooks(model)
    batch.scores(hooks)
    t0 = time.perf_counter()
    for _ in range(20):
        batch.scores(pcp.hooks(model))
    t_eval = (time.perf_counter() - t0) / 20

    t0 = time.perf_counter()
    res = tune(model, pcp, sets, neg, n_trials=n_trials, seed=0, progress=False)
    t_tune = time.perf_counter() - t0
    print(
        f"[tuning] toy shape, 13 sets x 50 x 2 tokens, rank-2 PCP on mlp0+mlp2:\n"
        f"  fit (PCA + least squares): {t_fit:.2f} s\n"
        f"  one batched evaluation of all 13 sets: {t_eval * 1e3:.1f} ms\n"
        f"  {n_trials} Optuna trials: {t_tune:.1f} s ({t_tune / n_trials * 1e3:.1f} ms/trial), "
        f"best MSE {res.study.best_value:.2e} -> {'PASS' if t_tune < 60 else 'FAIL'} (< 60 s)"
    )


def bench_forward(reps: int) -> None:
    """Plain vs PCP-ablated forward on a GPT-2-small-shaped model, interleaved."""
    model = gpt2_small_shaped(d_vocab=50257, n_ctx=256)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50257, (8, 128), generator=g)
    fit_tokens = torch.randint(0, 50257, (8, 32), generator=g)
    two = fit_pcp(model, fit_tokens, ["mlp1", "mlp2"], 2, progress=False)
    every = [f"{k}{i}" for i in range(12) for k in ("attn", "mlp")]
    allm = fit_pcp(model, fit_tokens, every, 2, scales="ones", progress=False)
    variants = {"plain": [], "pcp mlp1+mlp2": two.hooks(model), "pcp all 24": allm.hooks(model)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for hooks in variants.values():  # warm-up
            with model.hooks(fwd_hooks=hooks):
                model(tokens)
        for _ in range(reps):
            for name, hooks in variants.items():
                with model.hooks(fwd_hooks=hooks):
                    t0 = time.perf_counter()
                    model(tokens)
                    times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["plain"])
    print(f"[forward] GPT-2-small shape, batch 8 x 128, median of {reps} interleaved runs:")
    for name, ts in times.items():
        ratio = statistics.median(ts) / base
        verdict = "" if name == "plain" else (" PASS" if ratio <= 1.1 else " FAIL")
        print(f"  {name:>14}: {statistics.median(ts) * 1e3:8.1f} ms  ratio {ratio:.3f}{verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--skip-tune", action="store_true")
    ap.add_argument("--skip-forward", action="store_true")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")
    if not args.skip_tune:
        bench_tuning(args.trials)
    if not args.skip_forward:
        bench_forward(args.reps)


if __name__ == "__main__":
    main()
