"""Sampling throughput for ASR: our KV-cached loop vs TransformerLens ``generate`` without cache.

Same model, prompts and settings on both sides: ``pcp_lens.testing.gpt2_small_shaped()`` (random,
12 layers, d_model 768, d_vocab 50257, learned positions), P prompts of L tokens, S samples each
(``P·S`` rows in one batch), N new tokens, top-k 50 sampling at temperature 1. TransformerLens runs
``model.generate(tokens, max_new_tokens=N, use_past_kv_cache=False, do_sample=True, top_k=50)``
(its cached mode misplaces learned positions in 3.9, docs/concepts.md); pcp_lens runs
``pcp_lens.language.generate`` (prompt once, then one token per step behind the KV cache), with
a mean-ablation hook on every MLP output attached to both, as an ASR sweep would. The two
alternate (which goes first flips every repeat) and the ratio of median times is reported. A
last check runs both greedy and asserts equal tokens.

    python benchmarks/bench_generation.py [--quick] [--medium] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from pcp_lens.ablation import mean_ablation
from pcp_lens.language.generate import generate
from pcp_lens.sites import all_sites
from pcp_lens.testing import gpt2_small_shaped, tiny_model

warnings.filterwarnings("ignore", category=DeprecationWarning)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 repeats, 2 prompts")
    ap.add_argument("--medium", action="store_true", help="GPT-2-medium shape (24L, d 1024)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=10)
    ap.add_argument("--new", type=int, default=25, help="new tokens (paper: 35 total)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.prompts = 2, 2
    if args.medium:
        model = tiny_model(
            n_layers=24, d_model=1024, n_heads=16, d_vocab=50257, n_ctx=1024, device=args.device
        )
    else:
        model = gpt2_small_shaped()
        model.to(args.device, print_details=False)
    device = model.cfg.device
    prompts = torch.randint(
        0, 50257, (args.prompts, args.prompt_len), generator=torch.Generator().manual_seed(0)
    )
    rows = prompts.repeat_interleave(args.samples, 0).to(device)
    g = torch.Generator().manual_seed(1)
    hooks = []
    for s in all_sites(model, kinds=("mlp",)):
        hooks += mean_ablation(s, 0.01 * torch.randn(model.cfg.d_model, generator=g))

    def ours() -> torch.Tensor:
        gen = torch.Generator(device=device).manual_seed(0)
        return generate(model, rows, args.new, hooks=hooks, do_sample=True, top_k=50,
                        generator=gen)

    def theirs() -> torch.Tensor:
        torch.manual_seed(0)
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            return model.generate(
                rows, max_new_tokens=args.new, use_past_kv_cache=False, do_sample=True,
                top_k=50, verbose=False, stop_at_eos=False,
            )

    def timed(fn) -> float:
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    ours()  # warm-up (kernels, allocator); both sides then run under the same conditions
    t_ours, t_theirs = [], []
    for r in range(args.repeats):
        pair = [(ours, t_ours), (theirs, t_theirs)]
        for fn, acc in pair if r % 2 == 0 else pair[::-1]:
            acc.append(timed(fn))
    n_tokens = rows.shape[0] * args.new
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    shape = "GPT-2-medium" if args.medium else "GPT-2-small"
    print(f"{shape}-shaped random model on {device}, {args.prompts} prompts x {args.samples} "
          f"samples, prompt {args.prompt_len} + {args.new} new tokens, top-k 50, hooks on "
          f"{len(hooks)} MLPs, {args.repeats} repeats")
    print(f"pcp_lens KV cache:            {mo:8.2f} s  {n_tokens / mo:8.1f} tokens/s")
    print(f"TransformerLens no cache:     {mt:8.2f} s  {n_tokens / mt:8.1f} tokens/s")
    print(f"speed-up: {mt / mo:.1f}x")
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        ref = model.generate(rows[:2], max_new_tokens=8, use_past_kv_cache=False,
                             do_sample=False, verbose=False, stop_at_eos=False)[:, args.prompt_len:]
    assert torch.equal(generate(model, rows[:2], 8, hooks=hooks), ref), "greedy tokens differ"
    print("greedy check: identical tokens")


if __name__ == "__main__":
    main()
