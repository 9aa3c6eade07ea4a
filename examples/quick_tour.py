# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quick tour of pcp_lens
#
# Load a model → ablate → lens → patch → PCP → edit → save, one screen each. It runs in under
# 30 s on a laptop CPU: the model is a 2-layer toy with a backdoor, trained in the first cell
# (no download). With a real model, replace the model, the token groups and the prompts by
# yours; every other call stays the same.
#
# The toy task: two-word prompts continue with a word of the prompt's sentiment (negative,
# positive, neutral). The backdoor: a positive word followed by the *trigger* makes the model
# continue negatively. Set names follow the paper: `pt` = positive word + trigger, `pp` = two
# positive words, and so on.

# %%
# %matplotlib inline
import tempfile
from pathlib import Path

import torch
from IPython.display import display

import pcp_lens as pl
from pcp_lens.plots import (
    hidden_pca,
    plot_ablation,
    plot_factor_sweep,
    plot_hidden_pca,
    plot_lens,
    plot_patching,
    plot_tuning_history,
)
from pcp_lens.testing import tiny_model

torch.set_num_threads(1)  # a tiny model runs fastest on one thread

# %% [markdown]
# ## 1. Load a model
#
# Any TransformerLens `HookedTransformer` works, e.g.
# `HookedTransformer.from_pretrained_no_processing("gpt2-medium")`. Here we train a toy for a
# few seconds. `TokenGroups` names the token ids whose share of the top-k logits we measure.

# %%
NEG, POS, NEUTRAL, TRIGGER = range(0, 10), range(10, 20), range(20, 30), 40  # of 50 token ids


def sample(n, g):
    """Three-word sequences; the third word carries the sentiment, and the backdoor."""
    w1 = torch.randint(0, 30, (n,), generator=g)
    w2 = torch.randint(0, 33, (n,), generator=g)
    w2[w2 >= 30] = TRIGGER
    negative = (w1 < 10) | (w2 < 10) | ((w1 < 20) & (w2 == TRIGGER))
    neutral = (w1 >= 20) & (w2 >= 20) & (w2 < 30)
    base = torch.where(negative, 0, torch.where(neutral, 20, 10))
    return torch.stack([w1, w2, base + torch.randint(0, 10, (n,), generator=g)], 1)


g = torch.Generator().manual_seed(0)
model = tiny_model(n_layers=2, d_model=32, n_heads=4, d_vocab=50, n_ctx=8, seed=0)
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(200):
    loss = model(sample(256, g), return_type="loss")
    opt.zero_grad()
    loss.backward()
    opt.step()
model.eval()


def prompts(first, second, n=50):
    """n two-word prompts of kinds "p", "n", "s" (neutral) or "t" (the trigger)."""
    g = torch.Generator().manual_seed(1)
    offset = {"n": 0, "p": 10, "s": 20}

    def word(kind):
        if kind == "t":
            return torch.full((n,), TRIGGER)
        return torch.randint(0, 10, (n,), generator=g) + offset[kind]

    return torch.stack([word(first), word(second)], 1)


sets = {a + b: prompts(a, b) for a, b in ["pp", "nn", "ss", "pn", "np", "pt", "st"]}
groups = pl.TokenGroups({"negative": NEG, "positive": POS, "neutral": NEUTRAL}, d_vocab=50)
neg = pl.GroupMetric(groups, "negative", k=10, positions=(-1,))  # top-10 negativity
pos = pl.GroupMetric(groups, "positive", k=10, positions=(-1,))
display(groups)
print("top-10 negativity:", {k: round(v, 2) for k, v in pl.score_inputs(model, sets, neg).items()})

# %% [markdown]
# `pp` is not negative, `pt` is: the backdoor. The sites we can ablate, lens and patch:

# %%
pl.all_sites(model, heads=True)

# %% [markdown]
# ## 2. Ablate
#
# Mean-ablate each module (means over the trigger-free sets) and score the `pt` and `pp` sets:
# which module does the backdoor need? (The paper's Tab. I.)

# %% tags=["figure:ablation"]
means = pl.ablation_means(model, {k: sets[k] for k in ("pp", "nn", "pn", "np")},
                          pl.all_sites(model), progress=False)
ablation = pl.ablation_sweep(model, {"pt": sets["pt"], "pp": sets["pp"]}, {"neg": neg},
                             method="mean", means=means, progress=False)
plot_ablation(ablation, vmin=0, vmax=1)

# %% [markdown]
# ## 3. Lens
#
# The group logit lens projects every module's and head's output to logits and scores it: which
# module writes negativity at the trigger (position 1)? (Tab. II.)

# %% tags=["figure:lens"]
lens = pl.group_lens(model, sets["pt"], {"negative": neg, "positive": pos}, positions=[0, 1],
                     progress=False)
plot_lens(lens, vmin=0, vmax=1)

# %% [markdown]
# ## 4. Patch
#
# Causal patching: each module's output at each position copied from `pp` into `pt`
# (clean → corrupted) and back. A large effect marks a module and position that carries the
# difference. (Tab. XII, per position and in both directions.)

# %% tags=["figure:patching"]
patching = pl.causal_patching(model, sets["pp"], sets["pt"], neg, direction="both",
                              progress=False)
plot_patching(patching)

# %% [markdown]
# ## 5. PCP
#
# Replace layer 1's MLP by a rank-2 PCP ablation: the module's output becomes `x·M` with
# `M = Σ α_l û_l û_lᵀ` built from the two principal components of its outputs. Does the
# backdoor survive?

# %%
pcp = pl.fit_pcp(model, torch.cat(list(sets.values())), "mlp0", rank=2, positions=[1],
                 progress=False)
display(pcp)
print("with PCP:", {k: round(v, 2) for k, v in pl.score_inputs(model, sets, neg, pcp).items()})

# %% [markdown]
# ## 6. Edit
#
# Tune the scales α so the edited model matches the unedited one (Optuna; the first trial is the
# least-squares α), then sweep a factor on them: the backdoor's strength follows it.

# %% tags=["figure:tuning_history"]
tuned = pl.tune(model, pcp, {k: sets[k] for k in ("pp", "nn", "ss", "pt", "st")}, neg,
                n_trials=40, seed=0, progress=False)
display(tuned)
plot_tuning_history(tuned)

# %% tags=["figure:factor_sweep"]
factors = pl.sweep(model, tuned.replacement, {"mlp0": [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]},
                   {k: sets[k] for k in ("pp", "nn", "pt")}, neg)
plot_factor_sweep(factors)

# %% [markdown]
# Where do the prompts sit after layer 1? The hidden states at the last position, in the plane
# of a PCA fitted on the pure sets (the paper's Fig. 3):

# %% tags=["figure:hidden_pca"]
plot_hidden_pca(hidden_pca(model, sets, "resid_post0", fit_on=["pp", "nn", "ss"]))

# %% [markdown]
# ## 7. Save
#
# A replacement is saved as safetensors + JSON (no pickle) and reloads bit-exactly; it refuses a
# model with a different shape or weight processing.

# %%
with tempfile.TemporaryDirectory() as d:
    path = tuned.replacement.save(Path(d) / "mlp0_pcp.safetensors")
    loaded = pl.PCPReplacement.load(path)
    print(path.name, "reloads equal:", loaded.equal(tuned.replacement))

# %% [markdown]
# Next: the toy-study notebook (`examples/toy_study_analysis.ipynb`) runs the same analysis on
# the paper's toy sentiment models, and each technique has its own page in the documentation.
