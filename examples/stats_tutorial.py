"""Streaming activation statistics: mean and covariance without storing activations.

Run: python examples/stats_tutorial.py
"""

import torch

from pcp_lens import collect_stats
from pcp_lens.testing import tiny_model

model = tiny_model(n_layers=2, d_model=16)
tokens = torch.randint(0, 50, (1000, 8))

# Mean and covariance of two module outputs at position 1 (the paper's "second token"), over
# 1000 inputs, 64 at a time: memory stays O(d_model^2) per site however many inputs pass.
stats = collect_stats(
    model, tokens, ["mlp0", "attn1"], positions=[1], batch_size=64, progress=False
)
print(stats["mlp0"].n, stats["mlp0"].mean.shape, stats["mlp0"].cov.shape)

# Pool every position instead, and read raw hook points too (here: ln2's normalised output).
pooled = collect_stats(model, tokens, ["mlp0", "blocks.0.ln2.hook_normalized"], progress=False)
print({k: v.n for k, v in pooled.items()})

# The result is exact: compare with a direct computation on stacked activations.
_, cache = model.run_with_cache(tokens[:, :])
direct = cache["blocks.0.hook_mlp_out"][:, 1].double()
print(
    float((stats["mlp0"].mean - direct.mean(0)).abs().max()),
    float((stats["mlp0"].cov - torch.cov(direct.T)).abs().max()),
)
