"""Batched causal patching vs TransformerLens's patching functions, side by side in one run.

Patches every attn_out and mlp_out site at every position of a GPT-2-small-shaped random model
(12 layers, d_model 768, d_vocab 50257; 8 prompts x 16 tokens; metric read at the last position)
and prints the time of each (wall clock and the process's CPU time), their ratios and the largest
difference of results. With one torch thread the CPU time is the work done, whatever else the
machine runs, so its ratio holds on a shared box where the wall-clock ratio drifts with the
load (both are printed; docs/benchmarks.md says which was quiet). TransformerLens
computes full logits whatever the metric, so it runs once (plain callable); pcp_lens runs with the
metric declaring its position (``PositionMetric``) and with the same plain callable.

    python benchmarks/bench_patching.py [--quick] [--repeats N] [--batch 8] [--seq 16]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from pcp_lens.groups import PositionMetric
from pcp_lens.patching import causal_patching, patching_grid
from pcp_lens.testing import gpt2_small_shaped, tiny_model

warnings.filterwarnings("ignore")
from transformer_lens import patching as tlp  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="4-layer d_model 256 model instead")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = (
        tiny_model(n_layers=4, d_model=256, n_heads=8, d_vocab=50257, n_ctx=64)
        if args.quick
        else gpt2_small_shaped()
    )
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, model.cfg.d_vocab, (args.batch, args.seq), generator=g)
    corrupted = torch.randint(0, model.cfg.d_vocab, (args.batch, args.seq), generator=g)
    def diff(lg: torch.Tensor) -> torch.Tensor:
        return (lg[:, -1, 11] - lg[:, -1, 12]).mean()

    metrics = {"positioned": PositionMetric(diff, positions=(-1,)), "plain callable": diff}
    print(
        f"model: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
        f"d_vocab {model.cfg.d_vocab}; {args.batch} prompts x {args.seq} tokens; "
        f"torch threads {torch.get_num_threads()}"
    )

    t_tl: list[tuple[float, float]] = []
    t_ours: dict[str, list[tuple[float, float]]] = {k: [] for k in metrics}
    dfs = {}
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(clean)
            ref = {
                "attn": tlp.get_act_patch_attn_out(model, corrupted, clean_cache, diff),
                "mlp": tlp.get_act_patch_mlp_out(model, corrupted, clean_cache, diff),
            }
        t_tl.append((time.perf_counter() - t0, time.process_time() - c0))
        del clean_cache
        for name, metric in metrics.items():
            t0, c0 = time.perf_counter(), time.process_time()
            dfs[name] = causal_patching(model, clean, corrupted, metric, progress=False)
            t_ours[name].append((time.perf_counter() - t0, time.process_time() - c0))
    tl_wall, tl_cpu = min(w for w, _ in t_tl), min(c for _, c in t_tl)
    print(
        "| method | wall s | CPU s | TL / this (wall) | TL / this (CPU) | max abs difference |\n"
        "|---|---|---|---|---|---|"
    )
    print(
        f"| TransformerLens get_act_patch_attn_out + mlp_out | {tl_wall:.2f} | {tl_cpu:.2f} "
        "| 1 | 1 | |"
    )
    for name, df in dfs.items():
        gap = max((ref[k] - patching_grid(df, k)).abs().max().item() for k in ("attn", "mlp"))
        wall, cpu = min(w for w, _ in t_ours[name]), min(c for _, c in t_ours[name])
        print(
            f"| pcp_lens causal_patching, {name} metric | {wall:.2f} | {cpu:.2f} | "
            f"{tl_wall / wall:.1f}x | {tl_cpu / cpu:.1f}x | {gap:.2e} |"
        )


if __name__ == "__main__":
    main()
