"""Mean-ablation sweep: ``ablation_sweep`` (each ablation resumed from its first block) against
one full hooked forward pass per ablation, the way it is written by hand with TransformerLens.

Model: ``pcp_lens.testing.gpt2_small_shaped()`` (12 layers, d_model 768, d_vocab 50257), every
attn and mlp site (24 ablations + the unchanged model), mean ablation, a top-10 group metric at
the last position. Both paths run in the same process, alternating, and must agree to 1e-6.
One torch thread by default (a shared 2-core machine makes two threads noisy).

    python benchmarks/bench_ablation_sweep.py [--quick] [--threads T]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from pcp_lens import TokenGroups
from pcp_lens.ablation import ablation_hooks, ablation_means, ablation_sweep
from pcp_lens.groups import GroupMetric
from pcp_lens.sites import all_sites
from pcp_lens.testing import gpt2_small_shaped, tiny_model

warnings.filterwarnings("ignore", category=DeprecationWarning)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4-layer d_model 256 model, 2 repeats")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--pos", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = (
        tiny_model(n_layers=4, d_model=256, n_heads=4, d_vocab=50257, n_ctx=64)
        if args.quick
        else gpt2_small_shaped()
    )
    repeats = 2 if args.quick else args.repeats
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.cfg.d_vocab, (args.batch, args.pos), generator=gen)
    groups = TokenGroups({"neg": range(0, 500), "pos": range(500, 1000)}, model.cfg.d_vocab)
    metric = GroupMetric(groups, "neg", positions=(-1,))
    sites = all_sites(model)
    means = ablation_means(model, tokens, sites, positions=[-1], progress=False)

    def ours() -> dict[str, float]:
        df = ablation_sweep(model, tokens, metric, sites, means=means, progress=False)
        return dict(zip(df.site, df.value, strict=True))

    def by_hand() -> dict[str, float]:
        with torch.no_grad():
            out = {"unchanged": float(metric(model(tokens)))}
            for s in sites:
                hooks = ablation_hooks(model, [s], "mean", means=means)
                out[s.name] = float(metric(model.run_with_hooks(tokens, fwd_hooks=hooks)))
        return out

    times: dict[str, list[float]] = {"ours": [], "by_hand": []}
    results = {}
    for i in range(repeats):
        for name, fn in (("ours", ours), ("by_hand", by_hand))[:: 1 if i % 2 == 0 else -1]:
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    diff = max(abs(results["ours"][k] - results["by_hand"][k]) for k in results["by_hand"])
    a, b = statistics.median(times["ours"]), statistics.median(times["by_hand"])
    print(
        f"model: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}; {len(sites)} ablations "
        f"+ unchanged; tokens {tuple(tokens.shape)}; {args.threads} thread(s)"
    )
    print(f"by hand (full forward per ablation): {b:.2f} s   ablation_sweep: {a:.2f} s")
    print(f"speed-up {b / a:.2f}x   max |difference| {diff:.1e}")
    assert diff <= 1e-6, diff


if __name__ == "__main__":
    main()
