"""Batched causal patching vs TransformerLens's patching functions, side by side in one run.

Patches every attn_out and mlp_out site at every position of a GPT-2-small-shaped random model
(12 layers, d_model 768, d_vocab 50257; 8 prompts x 16 tokens; metric read at the last position)
and prints the time of each, their ratios and the largest difference of results. TransformerLens
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

    t_tl: list[float] = []
    t_ours: dict[str, list[float]] = {k: [] for k in metrics}
    dfs = {}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(clean)
            ref = {
                "attn": tlp.get_act_patch_attn_out(model, corrupted, clean_cache, diff),
                "mlp": tlp.get_act_patch_mlp_out(model, corrupted, clean_cache, diff),
            }
        t_tl.append(time.perf_counter() - t0)
        del clean_cache
        for name, metric in metrics.items():
            t0 = time.perf_counter()
            dfs[name] = causal_patching(model, clean, corrupted, metric, progress=False)
            t_ours[name].append(time.perf_counter() - t0)
    tl = min(t_tl)
    print("| method | seconds | TL / this | max abs difference |\n|---|---|---|---|")
    print(f"| TransformerLens get_act_patch_attn_out + mlp_out | {tl:.2f} | 1 | |")
    for name, df in dfs.items():
        gap = max((ref[k] - patching_grid(df, k)).abs().max().item() for k in ("attn", "mlp"))
        ours = min(t_ours[name])
        print(
            f"| pcp_lens causal_patching, {name} metric | {ours:.2f} | {tl / ours:.1f}x | "
            f"{gap:.2e} |"
        )


if __name__ == "__main__":
    main()
