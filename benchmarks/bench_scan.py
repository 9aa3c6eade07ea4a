"""A full backdoor scan vs one exhaustive causal patching of the same inputs, side by side.

The scan (every site and head, mean ablation, both patching directions, the lens, the circuit's
growth) of a GPT-2-small-shaped random model with a planted trigger in one MLP, against
``causal_patching`` over the 24 module sites × every position of the same pairs. Target (issue
17): the scan costs at most 3× the patching. The scan runs with its defaults: on the GPT-2
shape (144 heads > ``screen_above``) the attribution screen estimates the heads and verifies the
top 16 exactly; ``--exhaustive`` turns it off. ``--reference`` also gives the scan the unplanted
model as ``reference`` and verifies the circuit by the reference patch (more work than the
issue's scan; the circuit it finds is the answer to compare). Both the wall clock and the
process's CPU time are printed: with one thread the CPU time is the work done, whatever else
the machine runs.

    python benchmarks/bench_scan.py [--quick] [--pairs 32] [--seq 16] [--exhaustive] [--reference]
"""

from __future__ import annotations

import argparse
import time

import torch

from pcp_lens import GroupMetric, TokenGroups
from pcp_lens.patching import causal_patching
from pcp_lens.scan import scan_backdoor
from pcp_lens.testing import plant_trigger, tiny_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="4 layers, d_model 256 instead")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--exhaustive", action="store_true", help="screen=None: every head exactly")
    ap.add_argument("--reference", action="store_true", help="verify by the reference patch")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = (
        dict(n_layers=4, d_model=256, n_heads=8)
        if args.quick
        else dict(n_layers=12, d_model=768, n_heads=12)
    )
    model = tiny_model(**shape, d_vocab=50257, n_ctx=64, block_scale=0.3, logit_scale=4)
    trigger, target = 7, [1, 2, 3]
    benign = model
    place = f"mlp{shape['n_layers'] // 2}"
    model = plant_trigger(model, place, trigger, target)
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(10, model.cfg.d_vocab, (args.pairs, args.seq), generator=g)
    triggered = clean.clone()
    triggered[:, -1] = trigger
    metric = GroupMetric(TokenGroups({"t": target}, d_vocab=model.cfg.d_vocab), "t", stat="prob")
    print(
        f"model: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, d_vocab "
        f"{model.cfg.d_vocab}; {args.pairs} pairs x {args.seq} tokens; threads {args.threads}"
    )
    t0, c0 = time.perf_counter(), time.process_time()
    causal_patching(model, clean, triggered, metric, positions="each", progress=False)
    t_patch, c_patch = time.perf_counter() - t0, time.process_time() - c0
    extra: dict = {"screen": None} if args.exhaustive else {}
    if args.reference:
        extra.update(reference=benign, verify="reference")
    t0, c0 = time.perf_counter(), time.process_time()
    scan = scan_backdoor(model, triggered, clean, metric, progress=False, **extra)
    t_scan, c_scan = time.perf_counter() - t0, time.process_time() - c0
    n_sites = len(scan.table)
    print(f"causal_patching, {2 * model.cfg.n_layers} module sites x {args.seq} positions: "
          f"{t_patch:.1f} s wall, {c_patch:.1f} s CPU")
    print(f"scan_backdoor, {n_sites} sites (heads and resid_pre included), both directions, "
          f"ablation, lens, circuit{', reference' if args.reference else ''}: {t_scan:.1f} s "
          f"wall, {c_scan:.1f} s CPU")
    print(f"ratio scan / patching: {t_scan / t_patch:.2f} wall, {c_scan / c_patch:.2f} CPU "
          "(target <= 3)")
    print(f"circuit: {scan.circuit}, verified {scan.verified} (planted: {place}; verify "
          f"{scan.info['verify']})")
    scr = scan.info["screen"]
    print(
        f"screen: {scr['method']}, {len(scr['verified'])} of {scr['n_heads']} heads verified"
        if scr.get("method")
        else "screen: off (every head exact)"
    )


if __name__ == "__main__":
    main()
