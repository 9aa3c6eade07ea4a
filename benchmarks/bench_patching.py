"""Batched causal patching vs TransformerLens's patching functions, side by side in one run.

Patches every attn_out and mlp_out site at every position of a GPT-2-small-shaped random model
(12 layers, d_model 768, d_vocab 50257; 8 prompts x 16 tokens; metric read at the last position)
and prints the time of each, their ratio and the largest difference of results.

    python benchmarks/bench_patching.py [--quick] [--plain] [--repeats N]
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
    ap.add_argument(
        "--plain", action="store_true", help="a plain callable metric (logits at every position)"
    )
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

    metric = diff if args.plain else PositionMetric(diff, positions=(-1,))
    print(
        f"model: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
        f"d_vocab {model.cfg.d_vocab}; {args.batch} prompts x {args.seq} tokens; "
        f"torch threads {torch.get_num_threads()}; "
        f"{'plain callable' if args.plain else 'positioned'} metric"
    )

    t_tl, t_ours = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(clean)
            ref = {
                "attn": tlp.get_act_patch_attn_out(model, corrupted, clean_cache, metric),
                "mlp": tlp.get_act_patch_mlp_out(model, corrupted, clean_cache, metric),
            }
        t_tl.append(time.perf_counter() - t0)
        del clean_cache
        t0 = time.perf_counter()
        df = causal_patching(model, clean, corrupted, metric, progress=False)
        t_ours.append(time.perf_counter() - t0)
    diff = max((ref[k] - patching_grid(df, k)).abs().max().item() for k in ("attn", "mlp"))
    tl, ours = min(t_tl), min(t_ours)
    print(
        f"| method | seconds |\n|---|---|\n| TransformerLens get_act_patch_attn_out + "
        f"mlp_out | {tl:.2f} |\n| pcp_lens causal_patching | {ours:.2f} |"
    )
    print(f"speed-up: {tl / ours:.1f}x   max |difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
