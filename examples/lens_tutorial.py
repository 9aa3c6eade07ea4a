"""Group logit lens on a tiny backdoored model (docs/lens.md walks through it).

Uses the toy model of ``ablation_tutorial.py`` (same folder) and builds the paper's Tab. II for it:
top-5 negativity and positivity of every module output at the positive word (position 0) and at
the trigger (position 1).

Run: ``python examples/lens_tutorial.py [--out DIR]`` (``--out`` saves a heatmap PNG).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from ablation_tutorial import NEG, NEUTRAL, POS, backdoored_toy, prompts

from pcp_lens import GroupMetric, TokenGroups, group_metrics
from pcp_lens.lens import group_lens, lens_logits, lens_table
from pcp_lens.plots import heatmap


def main(out: Path | None = None) -> None:
    torch.set_num_threads(1)  # a tiny model runs fastest on one thread
    # --8<-- [start:lens]
    model = backdoored_toy()
    groups = TokenGroups({"neg": NEG, "pos": POS, "neutral": NEUTRAL}, d_vocab=50)
    metrics = {k: m for k, m in group_metrics(groups, k=5).items() if k != "neutral"}
    pt = prompts("p", "t")  # a positive word, then the trigger

    df = group_lens(model, pt, metrics, positions=[0, 1])  # ln="isolated", as in the paper
    print(df.head(3).to_string())
    table = lens_table(df)
    print("\nTab. II layout (columns: position, metric):")
    print(table.round(2).to_string())
    # --8<-- [end:lens]

    # --8<-- [start:ln]
    rows = ["attn0", "mlp0", "attn1", "mlp1", "resid_post1"]
    neg_logit = {"neg logit": GroupMetric(groups, "neg", stat="logit")}  # mean logit of the group
    compare = pd.DataFrame(
        {
            ln: group_lens(model, pt, neg_logit, [1], rows, ln=ln, progress=False).set_index(
                "paper_name"
            )["value"]
            for ln in ("isolated", "cached", "none")
        }
    )
    print("\nMean negative-word logit at the trigger under the three LayerNorm treatments:")
    print(compare.round(2).to_string())
    # --8<-- [end:ln]

    # --8<-- [start:logits]
    logits = lens_logits(model, pt[:4], ["mlp0", "attn0.h1"], positions=[1])
    print("\nTop-5 tokens of mlp0 alone at the trigger:", logits["mlp0"][0, 0].topk(5).indices)
    print("Shapes:", {k: tuple(v.shape) for k, v in logits.items()})
    # --8<-- [end:logits]

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        fig = heatmap(table, title="group logit lens, p + t", vmin=0, vmax=1)
        fig.savefig(out / "lens.png", dpi=120)
        print(f"saved {out / 'lens.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the heatmap PNG")
    main(parser.parse_args().out)
