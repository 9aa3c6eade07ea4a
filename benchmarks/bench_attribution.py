"""Attribution patching vs exact causal patching of the same units, side by side in one run.

Every attn_out and mlp_out site (24) and every attention head (144) × every position of a
GPT-2-small-shaped random model (12 layers, d_model 768, d_vocab 50257), 8 prompts × 16 tokens,
a logit difference read at the last position. Prints the seconds of each method, the speed-up
over exact patching, then (untimed) the accuracy table of ``bench_attribution_accuracy.py`` for
these units and every resid_pre site: Pearson r, Spearman rho and recall of the exact top-10 in
the estimate's top-20, per site kind.

    python benchmarks/bench_attribution.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from bench_attribution_accuracy import KINDS, scores

from pcp_lens.attribution import attribution_patching
from pcp_lens.groups import PositionMetric
from pcp_lens.patching import causal_patching
from pcp_lens.sites import all_sites
from pcp_lens.testing import gpt2_small_shaped, tiny_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="4-layer d_model 256 model instead")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=16)
    args = ap.parse_args()
    model = (
        tiny_model(n_layers=4, d_model=256, n_heads=8, d_vocab=50257, n_ctx=64)
        if args.quick
        else gpt2_small_shaped()
    )
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, model.cfg.d_vocab, (args.batch, args.seq), generator=g)
    corrupted = torch.randint(0, model.cfg.d_vocab, (args.batch, args.seq), generator=g)
    metric = PositionMetric(lambda lg: (lg[:, -1, 11] - lg[:, -1, 12]).mean(), positions=(-1,))
    sites = all_sites(model, heads=True)
    print(
        f"model: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
        f"d_vocab {model.cfg.d_vocab}; {args.batch} prompts x {args.seq} tokens; "
        f"{len(sites)} sites x {args.seq} positions; torch threads {torch.get_num_threads()}"
    )
    times: dict[str, list[float]] = {}
    results = {}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        exact = causal_patching(model, clean, corrupted, metric, sites=sites, progress=False)
        times.setdefault("exact", []).append(time.perf_counter() - t0)
        for method in ("atp", "atp*", "relp"):
            t0 = time.perf_counter()
            results[method] = attribution_patching(
                model, clean, corrupted, metric, sites=sites, method=method, progress=False
            )
            times.setdefault(method, []).append(time.perf_counter() - t0)
    ref = torch.tensor(exact["effect"].to_numpy(dtype=float))
    best = {k: min(v) for k, v in times.items()}
    print("| method | seconds | speed-up vs exact | Pearson r vs exact |\n|---|---|---|---|")
    print(f"| exact causal_patching | {best['exact']:.2f} | 1.0x | 1 |")
    for method, df in results.items():
        est = torch.tensor(df["estimate"].to_numpy(dtype=float))
        r = torch.corrcoef(torch.stack([est, ref]))[0, 1].item()
        print(
            f"| attribution_patching {method} | {best[method]:.2f} | "
            f"{best['exact'] / best[method]:.1f}x | {r:.3f} |",
            flush=True,
        )
    # accuracy per kind, with the resid_pre sites added (untimed)
    pre = all_sites(model, kinds=("resid_pre",))
    exact = pd.concat(
        [exact, causal_patching(model, clean, corrupted, metric, sites=pre, progress=False)],
        ignore_index=True,
    )
    kind = exact["kind"].where(exact["head"].isna(), "head")
    print("| method | kind | n | pearson | spearman | recall |\n|---|---|---|---|---|---|")
    for method, df in results.items():
        more = attribution_patching(
            model, clean, corrupted, metric, sites=pre, method=method, progress=False
        )
        est = pd.concat([df, more], ignore_index=True)["estimate"]
        for k in ("all", *KINDS):
            sel = kind.notna() if k == "all" else kind == k
            sc = scores(est[sel], exact.loc[sel, "effect"])
            print(
                f"| {method} | {k} | {sc['n']} | {sc['pearson']:.3f} | {sc['spearman']:.3f} "
                f"| {sc['recall']:.2f} |"
            )


if __name__ == "__main__":
    main()
