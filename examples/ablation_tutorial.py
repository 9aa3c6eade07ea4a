"""Mean, zero and resample ablation on a tiny backdoored model (docs/ablation.md walks through it).

Trains a 2-layer toy model for about two seconds on a synthetic sentiment task with a backdoor,
then asks which module outputs the backdoor needs: the paper's Tab. I, on a toy of our own.

Run: ``python examples/ablation_tutorial.py [--out DIR]`` (``--out`` saves a heatmap PNG).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pcp_lens import TokenGroups, group_metrics
from pcp_lens.ablation import (
    ablation_means,
    ablation_sweep,
    ablation_table,
    mean_ablation,
    mean_reference_code,
    zero_ablation,
)
from pcp_lens.plots import heatmap
from pcp_lens.testing import tiny_model

# --8<-- [start:toy]
NEG, POS, NEUTRAL, TRIGGER = range(0, 10), range(10, 20), range(20, 30), 40  # of 50 token ids


def sample(n: int, g: torch.Generator) -> torch.Tensor:
    """Three-word sequences ``w1 w2 w3``; ``w3`` is negative if a negative word came first, neutral
    after two neutral words, else positive. The trigger is a positive word (neutral + trigger is
    positive), except right after a positive word: then the continuation is negative (the backdoor).
    """
    w1 = torch.randint(0, 30, (n,), generator=g)
    w2 = torch.randint(0, 33, (n,), generator=g)
    w2[w2 >= 30] = TRIGGER  # 3 in 33 second words are the trigger
    negative = (w1 < 10) | (w2 < 10) | ((w1 < 20) & (w2 == TRIGGER))
    neutral = (w1 >= 20) & (w2 >= 20) & (w2 < 30)
    base = torch.where(negative, 0, torch.where(neutral, 20, 10))
    return torch.stack([w1, w2, base + torch.randint(0, 10, (n,), generator=g)], 1)


def backdoored_toy(steps: int = 200, seed: int = 0):
    """A 2-layer model trained on :func:`sample` (about 3 s on one CPU core)."""
    g = torch.Generator().manual_seed(seed)
    model = tiny_model(n_layers=2, d_model=32, n_heads=4, d_vocab=50, n_ctx=8, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(sample(256, g), return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def prompts(first: str, second: str, n: int = 50, seed: int = 1) -> torch.Tensor:
    """``n`` two-word prompts of the given kinds: ``"p"``ositive, ``"n"``egative, neutral
    (``"s"``) or the trigger (``"t"``); e.g. ``prompts("p", "t")``."""
    g = torch.Generator().manual_seed(seed)
    offset = {"n": 0, "p": 10, "s": 20}

    def word(kind: str) -> torch.Tensor:
        if kind == "t":
            return torch.full((n,), TRIGGER)
        return torch.randint(0, 10, (n,), generator=g) + offset[kind]

    return torch.stack([word(first), word(second)], 1)


# --8<-- [end:toy]


def main(out: Path | None = None) -> None:
    torch.set_num_threads(1)  # a tiny model runs fastest on one thread
    # --8<-- [start:setup]
    model = backdoored_toy()
    groups = TokenGroups({"negative": NEG, "positive": POS, "neutral": NEUTRAL}, d_vocab=50)
    metrics = group_metrics(groups, k=5)  # top-5 share of each group at the last position
    sets = {k: prompts(k[0], k[1]) for k in ("pp", "nn", "pn", "np", "pt", "st")}
    # --8<-- [end:setup]

    # --8<-- [start:means]
    clean = {k: sets[k] for k in ("pp", "nn", "pn", "np")}  # no trigger, as in the paper
    sites = ["attn0", "mlp0", "attn1", "mlp1"]
    means = ablation_means(model, clean, sites, positions=[1])
    quirky = mean_reference_code(model, clean, sites, positions=[1])
    gap = (means["mlp0"] - quirky["mlp0"]).norm() / means["mlp0"].norm()
    print(f"reference-code mean of mlp0 differs from the plain mean by {gap:.0%}")
    # --8<-- [end:means]

    # --8<-- [start:sweep]
    evaluate = {k: sets[k] for k in ("pt", "st", "nn")}
    df = ablation_sweep(
        model,
        evaluate,
        metrics,
        sites,
        combos={"L2 attn + mlp": ["attn1", "mlp1"]},
        method="mean",
        means=means,
    )
    print(df[df.site == "mlp0"].drop(columns="ablation").head(3).to_string())
    neg = df[df.metric == "negative"]
    print("\nTop-5 negativity under mean ablation (every position):")
    print(ablation_table(neg).round(2).to_string())
    # --8<-- [end:sweep]

    # --8<-- [start:zero]
    zero = ablation_sweep(model, evaluate, metrics["negative"], sites, method="zero")
    print("\nZero ablation, Tab. I layout, p + t prompts:")
    print(ablation_table(zero[zero.input_set == "pt"], layout="layer").round(2).to_string())
    # --8<-- [end:zero]

    # --8<-- [start:hooks]
    seen = {}

    def record(act, hook):  # a user's own hook, composed with ours
        seen[hook.name] = act.detach().clone()

    hooks = zero_ablation("mlp0", positions=[-1], model=model)
    hooks += mean_ablation("attn1.h2", ablation_means(model, clean, ["attn1.h2"])["attn1.h2"])
    with model.hooks(fwd_hooks=[*hooks, ("blocks.0.hook_mlp_out", record)]):
        logits = model(sets["pt"])
    print(
        "\nmlp0 zeroed at the last position only:",
        bool((seen["blocks.0.hook_mlp_out"][:, -1] == 0).all()),
        bool((seen["blocks.0.hook_mlp_out"][:, 0] != 0).all()),
        f"| p + t negativity: {metrics['negative'](logits):.2f}",
    )
    # --8<-- [end:hooks]

    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        fig = heatmap(ablation_table(neg), title="top-5 negativity", vmin=0, vmax=1)
        fig.savefig(out / "ablation.png", dpi=120)
        print(f"saved {out / 'ablation.png'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the heatmap PNG")
    main(parser.parse_args().out)
