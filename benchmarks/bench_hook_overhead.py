"""Cost of pcp_lens-style hooks on a plain forward pass (target: at most 5 % slower).

Model: ``pcp_lens.testing.gpt2_small_shaped()`` (12 layers, d_model 768, d_vocab 50257), 8 prompts ×
16 tokens, under ``torch.no_grad()``. The hooked pass attaches, for every attn_out and mlp_out site,
the pair of hooks our techniques use (one on the module's input, ``ln*.hook_normalized``, one on its
output, ``hook_*_out``), each an identity function returning ``None`` — 48 hooks — with
``model.hooks(...)`` around every forward, so attaching and removing them is timed too. Plain and
hooked passes are interleaved (alternating which goes first) so that drift in machine load hits
both alike; the ratio is the median of the per-pair ratios. One torch thread by default: on a
shared 2-core machine two OpenMP threads make single passes vary by 10x.

    python benchmarks/bench_hook_overhead.py [--quick] [--repeats R] [--threads T]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from pcp_lens._tl import attached_hook_count
from pcp_lens.sites import all_sites
from pcp_lens.testing import gpt2_small_shaped, tiny_model

warnings.filterwarnings("ignore", category=DeprecationWarning)


def identity(act: torch.Tensor, hook: object) -> None:
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 timed pairs instead of 30")
    ap.add_argument("--small", action="store_true", help="4-layer d_model 256 model instead")
    ap.add_argument("--repeats", type=int, default=None, help="timed pairs (default 30; quick 8)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: steadier on a shared machine; 0 = torch's default)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (8 if args.quick else 30)
    model = (
        tiny_model(n_layers=4, d_model=256, n_heads=8, d_vocab=50257, n_ctx=64)
        if args.small
        else gpt2_small_shaped()
    )
    tokens = torch.randint(
        0, model.cfg.d_vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    )
    sites = all_sites(model, kinds=("attn", "mlp"))
    hooks = [(s.input_hook_name, identity) for s in sites] + [
        (s.hook_name, identity) for s in sites
    ]

    def plain() -> torch.Tensor:
        return model(tokens)

    def hooked() -> torch.Tensor:
        with model.hooks(fwd_hooks=hooks):
            return model(tokens)

    with torch.no_grad():
        same = torch.equal(plain(), hooked())  # also warms both paths up
        for _ in range(2):
            plain()
            hooked()
        t_plain: list[float] = []
        t_hooked: list[float] = []
        for i in range(repeats):
            order = (plain, hooked) if i % 2 == 0 else (hooked, plain)
            for fn in order:
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                (t_plain if fn is plain else t_hooked).append(dt)
    assert attached_hook_count(model) == 0

    ratios = [h / p for h, p in zip(t_hooked, t_plain, strict=True)]
    med_ratio = statistics.median(ratios)
    print(
        f"model: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, d_vocab "
        f"{model.cfg.d_vocab}; {args.batch} prompts x {args.seq} tokens; {len(hooks)} no-op hooks; "
        f"{repeats} interleaved pairs; torch threads {torch.get_num_threads()}"
    )
    print(f"{'pass':>8} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
    for name, ts in (("plain", t_plain), ("hooked", t_hooked)):
        print(
            f"{name:>8} {1e3 * statistics.median(ts):>10.1f} {1e3 * min(ts):>8.1f} "
            f"{1e3 * max(ts):>8.1f}"
        )
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [min(ratios), max(ratios)]
    verdict = "PASS" if med_ratio <= 1.05 else "FAIL"
    print(
        f"hooked / plain: median of per-pair ratios {med_ratio:.3f} "
        f"(quartiles {q[0]:.3f}..{q[-1]:.3f}); ratio of medians "
        f"{statistics.median(t_hooked) / statistics.median(t_plain):.3f}; "
        f"ratio of minima {min(t_hooked) / min(t_plain):.3f}  [{verdict}: target <= 1.05]"
    )
    print(f"outputs identical with and without the hooks: {same}")


if __name__ == "__main__":
    main()
