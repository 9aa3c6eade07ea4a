"""Wall clock and peak memory of ``pcp-lens reproduce toy`` (budgets: 6 min and 2.5 GiB for the
default run, 20 min for ``--seeds 0 1 2``, 3 min for ``--quick``).

Runs the command in a fresh output folder (so every model is trained) as a child process and
samples the resident memory of the whole process tree (the command and its worker processes)
every 0.2 s; the peak is the largest *sum* over the tree, which ``/usr/bin/time`` does not give
for parallel workers.

    python benchmarks/bench_toy_reproduction.py [--quick] [--workers N] [--schedule fast|paper]
        [--seeds 0 1 2] [--trigger WORD]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time

import psutil


def tree_rss(p: psutil.Process) -> int:
    total = 0
    for q in [p, *p.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker may exit between listing and reading
            total += q.memory_info().rss
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--schedule", default="fast")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--trigger", default=None)
    ap.add_argument("--out", default=None, help="output folder (default: a fresh temporary one)")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="toy_bench_")
    cmd = [sys.executable, "-m", "pcp_lens.cli", "reproduce", "toy", "--out", out, "--no-progress"]
    cmd += ["--schedule", args.schedule] + (["--quick"] if args.quick else [])
    cmd += ["--workers", str(args.workers)] if args.workers else []
    cmd += ["--seeds", *map(str, args.seeds)] if args.seeds else []
    cmd += ["--trigger", args.trigger] if args.trigger else []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(watched))
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"command failed with exit status {proc.returncode}")
    budget = 3 * 60 if args.quick else (20 * 60 if args.seeds else 6 * 60)
    print(f"output: {out}")
    minutes, seconds = divmod(round(wall), 60)
    print(f"wall clock {minutes} min {seconds} s ({wall / budget:.2f} of the budget)")
    share = peak / (2.5 * 2**30)
    mb = peak / 2**20
    print(f"peak resident memory of the process tree {mb:.0f} MB ({share:.2f} of 2.5 GiB)")


if __name__ == "__main__":
    main()
