"""Peak memory of streaming statistics collection for N and 10·N inputs: it must stay flat.

Each configuration runs in a fresh subprocess (so no allocator state carries over), builds a random
model (4 layers, d_model 256, 8 heads, d_vocab 1000) and random token inputs, then measures the peak
resident memory *during* ``collect_stats`` (mean and d×d covariance of every attn_out and mlp_out)
above the resident memory just before it. The peak comes from the kernel's high-water mark
(``VmHWM``, reset through ``/proc/self/clear_refs``); where that is unavailable, from polling the
resident set every millisecond with psutil. Torch CPU tensors live in ordinary malloc'd memory, so
the resident set sees all of them (``tracemalloc`` would not).

glibc's malloc keeps freed blocks and moves its mmap threshold as the program runs, so the default
allocator's peak depends on allocation history and jitters by ±20 % between runs of the same
size. The main measurement therefore fixes ``MALLOC_MMAP_THRESHOLD_=65536`` in the subprocess:
every tensor above 64 KiB then gets its own mapping, returned on free, and the resident set tracks
the bytes torch actually holds. The same sizes with the default allocator are printed below for
reference (``--no-default-malloc`` skips them).

    python benchmarks/bench_stats_memory.py [--quick] [--n N] [--repeats R]

The inputs themselves (``N × seq`` token ids) are created before the measurement; the copy that
``collect_stats`` makes of them (tokens + padding mask, 9 bytes per token) is included.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MB = 1024 * 1024


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil  # fallback off Linux

    return psutil.Process().memory_info().rss


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


class _Poller:
    """Fallback peak-RSS sampler (1 ms period) for systems without a resettable VmHWM."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __enter__(self) -> _Poller:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())


def child(n: int, seq: int, batch_size: int, threads: int) -> dict[str, float]:
    import torch

    from pcp_lens import collect_stats
    from pcp_lens.sites import all_sites
    from pcp_lens.testing import tiny_model

    torch.set_num_threads(threads)
    model = tiny_model(n_layers=4, d_model=256, n_heads=8, d_vocab=1000, n_ctx=64, seed=0)
    sites = all_sites(model)  # attn0, mlp0, ..., mlp3
    tokens = torch.randint(
        0, model.cfg.d_vocab, (n, seq), generator=torch.Generator().manual_seed(1)
    )
    gc.collect()
    before = _rss_bytes()
    use_hwm = _reset_hwm()
    t0 = time.perf_counter()
    if use_hwm:
        stats = collect_stats(model, tokens, sites, batch_size=batch_size, progress=False)
        peak = (_status_kb("VmHWM") or 0) * 1024
    else:
        with _Poller() as p:
            stats = collect_stats(model, tokens, sites, batch_size=batch_size, progress=False)
        peak = p.peak
    seconds = time.perf_counter() - t0
    d = model.cfg.d_model
    assert all(s.n == n * seq for s in stats.values())
    return {
        "n": n,
        "tokens": n * seq,
        "seconds": seconds,
        "rss_before_mb": before / MB,
        "peak_delta_mb": (peak - before) / MB,
        "accumulators_mb": len(sites) * (d * d + d) * 8 / MB,
        "method": "VmHWM" if use_hwm else "psutil-poll",
    }


def run_child(n: int, args: argparse.Namespace, exact: bool) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(n),
        "--seq",
        str(args.seq),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
    ]
    env = dict(os.environ)
    if exact:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=64 instead of N=512")
    ap.add_argument("--n", type=int, default=None, help="base number of input sequences N")
    ap.add_argument("--seq", type=int, default=32, help="tokens per sequence")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each subprocess")
    ap.add_argument("--repeats", type=int, default=1, help="subprocesses per size (min taken)")
    ap.add_argument(
        "--no-default-malloc", action="store_true", help="skip the default-allocator reference rows"
    )
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.seq, args.batch_size, args.threads)))
        return
    n = args.n or (64 if args.quick else 512)
    print(
        f"collect_stats peak memory: 4 layers, d_model 256, 8 sites (mean + cov), "
        f"{args.seq} tokens/seq, batch_size {args.batch_size}, {args.threads} thread(s)"
    )
    header = f"{'malloc':>8} {'inputs':>7} {'tokens':>7} {'seconds':>8} {'RSS before':>11}"
    print(header + f" {'peak delta':>11} {'accumulators':>13}")
    ratios: dict[str, float] = {}
    modes = [("exact", True)] + ([] if args.no_default_malloc else [("default", False)])
    for label, exact in modes:
        best: dict[int, dict[str, float]] = {}
        for size in (n, 10 * n):
            runs = [run_child(size, args, exact) for _ in range(args.repeats)]
            r = min(runs, key=lambda x: x["peak_delta_mb"])
            best[size] = r
            print(
                f"{label:>8} {r['n']:>7} {r['tokens']:>7} {r['seconds']:>8.1f} "
                f"{r['rss_before_mb']:>8.1f} MB {r['peak_delta_mb']:>8.1f} MB "
                f"{r['accumulators_mb']:>10.1f} MB"
            )
        ratios[label] = best[10 * n]["peak_delta_mb"] / best[n]["peak_delta_mb"]
        method = best[n]["method"]
    ratio = ratios["exact"]
    verdict = "PASS" if ratio <= 1.10 else "FAIL"
    print(
        f"peak memory ratio (10N / N), fixed mmap threshold: {ratio:.3f}  "
        f"[{verdict}: target <= 1.10; peak from {method}]"
    )
    if "default" in ratios:
        print(f"peak memory ratio (10N / N), default glibc malloc: {ratios['default']:.3f}")


if __name__ == "__main__":
    main()
