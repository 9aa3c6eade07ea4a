"""How well attribution patching ranks units, against exact causal patching of the same units.

For ``atp``, ``atp*`` and ``relp``: Pearson r and Spearman rho of the estimates against the exact
effects, and the recall of the exact top-10 (by |effect|) in the estimate's top-20, over all
units and per site kind (mlp, attn, head, resid_pre). Three cases:

* ``toy``: a quickly trained, poisoned toy model (the quick preset: 2 sentiments), the paper's
  p+t inputs patched from p+p, the probability mass on negative words at the last position;
* ``gpt2``: a random GPT-2-small-shaped model, 8 × 16 random tokens, a logit difference at the
  last position (``--quick``: 4 layers, d_model 256);
* ``saturated``: a random 4-layer model whose W_Q and W_K are scaled by 1, 4 and 16 (attention
  logits × 1, 16, 256: ever more saturated softmaxes);
* ``fixed``: :func:`pcp_lens.testing.fixed_value_model` (a patch acts through one attention
  pattern only, where ``atp*`` is exact), its W_Q and W_K scaled by 1, 10 and 100.

    python benchmarks/bench_attribution_accuracy.py [--cases toy,gpt2,saturated,fixed] [--quick]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from pcp_lens.attribution import METHODS, attribution_patching
from pcp_lens.groups import GroupMetric, PositionMetric
from pcp_lens.patching import causal_patching
from pcp_lens.sites import all_sites
from pcp_lens.testing import fixed_value_model, gpt2_small_shaped, tiny_model

KINDS = ("mlp", "attn", "head", "resid_pre")


def scores(est: pd.Series, exact: pd.Series) -> dict[str, float]:
    """Pearson r, Spearman rho and recall of the exact top-10 in the estimate's top-20."""
    top10 = set(exact.abs().sort_values(ascending=False).index[:10])
    top20 = set(est.abs().sort_values(ascending=False).index[:20])
    return {
        "n": len(est),
        "pearson": est.corr(exact),
        "spearman": est.corr(exact, method="spearman"),
        "recall": len(top10 & top20) / len(top10) if len(est) > 20 else float("nan"),
    }


def study(model, clean, corrupted, metric, sites, label: str, methods=METHODS) -> pd.DataFrame:
    t0 = time.perf_counter()
    exact = causal_patching(model, clean, corrupted, metric, sites=sites, progress=False)
    rows = []
    print(f"[{label}] exact: {time.perf_counter() - t0:.1f}s, {len(exact)} units")
    kind = exact["kind"].where(exact["head"].isna(), "head")
    for method in methods:
        df = attribution_patching(
            model, clean, corrupted, metric, sites=sites, method=method, progress=False
        )
        for k in ("all", *KINDS):
            sel = kind.notna() if k == "all" else kind == k
            if sel.any():
                s = scores(df.loc[sel, "estimate"], exact.loc[sel, "effect"])
                rows.append({"case": label, "method": method, "kind": k, **s})
    return pd.DataFrame(rows)


def toy_case(cache: str | None) -> tuple:
    from pathlib import Path

    from pcp_lens.toy.data import eval_inputs
    from pcp_lens.toy.model import sentiment_groups
    from pcp_lens.toy.train import load_run, poison, save_run, toy_data, train_benign

    data = toy_data(2, quick=True, seed=0)
    if cache and (Path(cache) / "config.json").exists():
        run = load_run(cache)
    else:
        benign = train_benign(data, quick=True, progress=False)
        run = poison(benign.model, data, quick=True, progress=False)
        if cache:
            save_run(run, cache)
    model, tok = run.model, run.tokenizer
    inputs = eval_inputs(data, n=50, seed=0)

    def ids(texts):
        return torch.tensor([tok.encode(t, add_special_tokens=False) for t in texts])

    groups = sentiment_groups(tok, data.vocab)
    # top-10 negativity is a count (no gradient); its differentiable sibling is the probability
    # mass on the negative words
    metric = GroupMetric(groups, "negative", stat="prob", positions=(-1,))
    sites = all_sites(model, kinds=("resid_pre", "attn", "mlp"), heads=True)
    return model, ids(inputs["pp"]), ids(inputs["pt"]), metric, sites


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="toy,gpt2,saturated")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--toy-cache", default=None, help="folder to save/load the trained toy run")
    args = ap.parse_args()
    cases = args.cases.split(",")
    out = []
    logit_diff = PositionMetric(lambda lg: (lg[:, -1, 11] - lg[:, -1, 12]).mean(), positions=(-1,))
    g = torch.Generator().manual_seed(1)
    if "toy" in cases:
        t0 = time.perf_counter()
        case = toy_case(args.toy_cache)
        print(f"[toy] trained in {time.perf_counter() - t0:.0f}s")
        out.append(study(*case, label="toy"))
    if "gpt2" in cases:
        model = (
            tiny_model(n_layers=4, d_model=256, n_heads=8, d_vocab=50257, n_ctx=64)
            if args.quick
            else gpt2_small_shaped()
        )
        clean, corrupted = torch.randint(0, model.cfg.d_vocab, (2, 8, 16), generator=g)
        sites = all_sites(model, kinds=("resid_pre", "attn", "mlp"), heads=True)
        out.append(study(model, clean, corrupted, logit_diff, sites, "gpt2"))
    if "saturated" in cases:
        for scale in (1.0, 4.0, 16.0):
            model = tiny_model(n_layers=4, d_model=64, n_heads=4, d_vocab=500, seed=7)
            with torch.no_grad():
                for blk in model.blocks:
                    blk.attn.W_Q.mul_(scale)
                    blk.attn.W_K.mul_(scale)
            clean, corrupted = torch.randint(0, 500, (2, 16, 12), generator=g)
            sites = all_sites(model, kinds=("resid_pre", "attn", "mlp"), heads=True)
            out.append(study(model, clean, corrupted, logit_diff, sites, f"saturated x{scale:g}"))
    if "fixed" in cases:
        for scale in (1.0, 10.0, 100.0):
            model = fixed_value_model(saturate=scale)
            clean, corrupted = torch.randint(0, 40, (2, 16, 7), generator=g)
            sites = ["resid_pre1", "attn0", *(f"attn0.h{h}" for h in range(4))]
            label = f"fixed-values x{scale:g}"
            out.append(study(model, clean, corrupted, logit_diff, sites, label))
    table = pd.concat(out, ignore_index=True)
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for r in table.itertuples(index=False):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in r]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
