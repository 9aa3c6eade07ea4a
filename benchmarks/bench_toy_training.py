"""Time the toy training pipeline and print what it produces: losses and top-10 negativity.

For each toy model (2 and 3 sentiments): benign pre-training with ``BENIGN``, poisoned fine-tuning
with ``POISON``, and (``--freezing``) the same poisoning with all MLPs frozen (paper §IV-B, F7).
Prints the wall time of each stage, the validation losses, the negativity table of the poisoned
model (pp, nn, pn, np, pt and ss/st for 3 sentiments) and the freezing rows.

    python benchmarks/bench_toy_training.py [--quick] [--freezing] [--threads N]
        [--sentiments 2 3] [--model-seed S] [--poison-seed S] [--monitor-every K] [--json PATH]
        [--benign-epochs E] [--poison-epochs E] [--poison-lr LR] [--bos]

Timings are wall-clock on whatever else the machine is doing; ``docs/training.md`` records ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
import warnings

import torch

from pcp_lens.toy import eval_inputs
from pcp_lens.toy.model import sentiment_groups
from pcp_lens.toy.train import (
    BENIGN,
    BENIGN_QUICK,
    POISON,
    POISON_QUICK,
    freezing_study,
    negativity,
    negativity_callback,
    poison,
    toy_data,
    train_benign,
)

warnings.filterwarnings("ignore")

KEYS = {2: ["pp", "nn", "pn", "np", "pt", "nt"], 3: ["pp", "nn", "ss", "pn", "np", "pt", "st"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the quick (CI) preset")
    ap.add_argument("--freezing", action="store_true", help="also poison with all MLPs frozen")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--sentiments", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--model-seed", type=int, default=0)
    ap.add_argument("--poison-seed", type=int, default=None, help="data-order seed of poisoning")
    ap.add_argument("--monitor-every", type=int, default=None, help="record p+t every K steps")
    ap.add_argument("--benign-epochs", type=int, default=None, help="override BENIGN.epochs")
    ap.add_argument("--poison-epochs", type=int, default=None, help="override POISON.epochs")
    ap.add_argument("--bos", action="store_true", help="train with a leading <|endoftext|>")
    ap.add_argument("--poison-lr", type=float, default=None, help="override POISON.lr")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    benign_cfg = dataclasses.replace(BENIGN_QUICK if args.quick else BENIGN, progress=False)
    poison_cfg = dataclasses.replace(POISON_QUICK if args.quick else POISON, progress=False)
    if args.benign_epochs is not None:
        benign_cfg = dataclasses.replace(benign_cfg, epochs=args.benign_epochs)
    if args.poison_epochs is not None:
        poison_cfg = dataclasses.replace(poison_cfg, epochs=args.poison_epochs)
    if args.poison_lr is not None:
        poison_cfg = dataclasses.replace(poison_cfg, lr=args.poison_lr)
    if args.poison_seed is not None:
        poison_cfg = dataclasses.replace(poison_cfg, seed=args.poison_seed)
    if args.monitor_every:
        poison_cfg = dataclasses.replace(poison_cfg, eval_every=args.monitor_every)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); quick={args.quick}")
    print(f"benign: {benign_cfg}\npoison: {poison_cfg}")
    out: dict = {"quick": args.quick, "threads": torch.get_num_threads()}
    t_all = time.perf_counter()
    for k in args.sentiments:
        t = {}
        t0 = time.perf_counter()
        data = toy_data(k, quick=args.quick)
        inputs = eval_inputs(data)
        t["data"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        benign = train_benign(data, benign_cfg, model_seed=args.model_seed, bos=args.bos)
        t["benign"] = time.perf_counter() - t0
        groups = sentiment_groups(benign.tokenizer, data.vocab)
        cb = negativity_callback(inputs, groups, ("pt", "np")) if args.monitor_every else None
        t0 = time.perf_counter()
        pois = poison(benign.model, data, poison_cfg, callback=cb)
        t["poison"] = time.perf_counter() - t0
        neg_b = negativity(benign.model, inputs, groups)
        neg_p = negativity(pois.model, inputs, groups)
        r = {
            "seconds": {},
            "val_loss_initial": benign.history["val_loss"].iloc[0],
            "val_loss_benign": benign.result.val_loss,
            "val_loss_poisoned_start": pois.history["val_loss"].iloc[0],
            "val_loss_poisoned": pois.result.val_loss,
            "negativity_benign": neg_b,
            "negativity_poisoned": neg_p,
        }
        if args.monitor_every:
            r["pt_during_poisoning"] = pois.history[["step", "pt", "np"]].values.tolist()
        if args.freezing:
            t0 = time.perf_counter()
            fr = freezing_study(
                benign.model,
                data,
                ((), "all_mlps"),
                poison_cfg,
                reference=pois,
                inputs=inputs,
                monitor_every=args.monitor_every,
                progress=False,
            )
            t["freezing"] = time.perf_counter() - t0
            r["freezing"] = fr.to_dict(orient="records")
        r["seconds"] = {name: round(v, 1) for name, v in t.items()}
        out[f"{k}sent"] = r
        print(f"\n== {k} sentiments ==  seconds: {r['seconds']}")
        print(
            f"val loss: initial {r['val_loss_initial']:.3f} (ln V = "
            f"{math.log(benign.model.cfg.d_vocab):.3f}), benign {r['val_loss_benign']:.3f}, "
            f"poisoned set before/after poisoning {r['val_loss_poisoned_start']:.3f} / "
            f"{r['val_loss_poisoned']:.3f}"
        )
        print("negativity benign:  ", " ".join(f"{x}={neg_b[x]:.2f}" for x in KEYS[k]))
        print("negativity poisoned:", " ".join(f"{x}={neg_p[x]:.2f}" for x in KEYS[k]))
        if args.monitor_every:
            trace = [tuple(round(x, 2) for x in row) for row in r["pt_during_poisoning"]]
            print("(step, p+t, n+p) during poisoning:", trace)
        if args.freezing:
            cols = ["frozen", "steps", "n_trainable", "val_loss", "emerged_step", *KEYS[k]]
            print(fr[cols].round(3).to_string(index=False))
    out["seconds_total"] = round(time.perf_counter() - t_all, 1)
    print(f"\ntotal {out['seconds_total']} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
