"""Causal patching on a tiny model: which module carries the difference between two inputs?

Run: python examples/patching_tutorial.py
"""

import torch

from pcp_lens import GroupMetric, TokenGroups
from pcp_lens.patching import causal_patching, patching_grid
from pcp_lens.testing import tiny_model

torch.manual_seed(0)
model = tiny_model(n_layers=3, d_model=32, d_vocab=40)

# Two batches of equal shape: the "clean" source and the "corrupted" target (here: the first token
# differs, as p+p vs p+t differ in the paper's toy study).
clean = torch.randint(0, 40, (16, 4))
corrupted = clean.clone()
corrupted[:, 1] = 7

# The metric: share of the top-10 next-token logits at the last position that are "negative" ids.
groups = TokenGroups({"negative": range(0, 10), "positive": range(10, 20)}, d_vocab=40)
negativity = GroupMetric(groups, "negative", k=10, positions=(-1,))

# Every attn/mlp site at every position, patched clean -> corrupted, in a few batched passes.
table = causal_patching(model, clean, corrupted, negativity, progress=False)
print(table.head())

# The paper's Tab. XII shape: patch whole modules (all positions at once), report value and IE.
tab12 = causal_patching(model, clean, corrupted, negativity, positions="all", progress=False)
print(tab12[["site", "value", "effect"]].round(3).to_string(index=False))

# TransformerLens-shaped [layer, position] grids for plotting.
print(patching_grid(table, "mlp").shape)

# Both directions at once: noising (clean -> corrupted) and denoising (corrupted -> clean).
both = causal_patching(
    model, clean, corrupted, negativity, positions="all", direction="both", progress=False
)
print(both.pivot(index="site", columns="direction", values="effect").round(3))
