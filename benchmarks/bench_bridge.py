"""TransformerBridge (TransformerLens 4.3) vs HookedTransformer (3.9) time on the GPT-2-small shape.

Both lines cannot share one Python, so the script runs itself as a worker under each venv
(``.venv`` and ``.venv-tl4``, or ``--tl3``/``--tl4`` paths), alternating them ``--rounds`` times so
that drift in machine load hits both alike, and prints bridge/hooked ratios of the medians:

* forward: ``model(tokens)``, 4 × 32 tokens;
* hooked forward: the same with 48 identity hooks (module input + output of every attn/mlp);
* patching: ``causal_patching`` of attn0, mlp0, attn6, mlp11, 2 × 16 tokens, all positions;
* PCP: ``fit_pcp`` of mlp5 at rank 16 over 8 × 16 tokens, then one forward with its hooks.

Model: ``pcp_lens.testing.gpt2_small_shaped()`` (12 layers, d_model 768, d_vocab 50257; random
weights, which do not change the time). One torch thread, ``torch.no_grad()``.

    python benchmarks/bench_bridge.py [--rounds R] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def worker(repeats: int) -> dict[str, float]:
    import torch

    from pcp_lens import _tl, causal_patching, fit_pcp
    from pcp_lens.sites import all_sites
    from pcp_lens.testing import gpt2_small_shaped

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = gpt2_small_shaped()
    tokens = torch.randint(0, 50257, (4, 32))
    hooks = []
    for s in all_sites(model, kinds=("attn", "mlp")):
        hooks += [(s.input_hook_name, lambda t, hook: None), (s.hook_name, lambda t, hook: None)]
    clean, corrupted = torch.randint(0, 50257, (2, 2, 16))
    fit_tokens = torch.randint(0, 50257, (8, 16))

    def metric(logits):
        return logits[:, -1, :10].sum(-1)

    def patch():
        causal_patching(model, clean, corrupted, metric, ["attn0", "mlp0", "attn6", "mlp11"],
                        positions="all", progress=False)

    def pcp():
        rep = fit_pcp(model, fit_tokens, "mlp5", 16, progress=False)
        with model.hooks(fwd_hooks=rep.hooks(model)):
            model(tokens)

    def hooked():
        with _tl.attached(model, hooks):
            model(tokens)

    with torch.no_grad():
        model(tokens)  # warm-up
        return {
            "backend": _tl.BACKEND,  # type: ignore[dict-item]
            "forward": _best(lambda: model(tokens), repeats),
            "hooked forward": _best(hooked, repeats),
            "patching": _best(patch, max(1, repeats // 2)),
            "PCP": _best(pcp, max(1, repeats // 2)),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tl3", default=str(ROOT / ".venv/bin/python"))
    ap.add_argument("--tl4", default=str(ROOT / ".venv-tl4/bin/python"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.repeats)))
        return
    got: dict[str, list[dict[str, float]]] = {"hooked": [], "bridge": []}
    for r in range(args.rounds):
        order = (args.tl3, args.tl4) if r % 2 == 0 else (args.tl4, args.tl3)
        for py in order:
            out = subprocess.run(
                [py, __file__, "--worker", "--repeats", str(args.repeats)],
                check=True, capture_output=True, text=True, env={"OMP_NUM_THREADS": "1"},
            ).stdout
            res = json.loads(out.strip().splitlines()[-1])
            got[res.pop("backend")].append(res)
    print(f"{'operation':<16}{'hooked s':>10}{'bridge s':>10}{'bridge/hooked':>15}")
    for op in got["hooked"][0]:
        h = statistics.median(r[op] for r in got["hooked"])
        b = statistics.median(r[op] for r in got["bridge"])
        print(f"{op:<16}{h:>10.3f}{b:>10.3f}{b / h:>15.2f}")


if __name__ == "__main__":
    sys.exit(main())
