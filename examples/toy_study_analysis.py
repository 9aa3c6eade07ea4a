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
# # The toy backdoor study, in a notebook
#
# Train a backdoored 3-sentiment toy model (the paper's §III-A, at the quick preset's size), then
# analyse it the way the paper does: mean ablation (Tab. I), group logit lens (Tab. II), causal
# patching (Tab. XII), a tuned PCP replacement of the layer-1 MLP (Tab. IV), factor sweeps of its
# scales (Tab. V/VI) and the hidden-state PCA (Fig. 3). One to two minutes on a CPU.
#
# `pcp-lens reproduce toy` runs every table at full size and writes a report; this notebook shows
# how to do each step yourself and look at it.

# %%
# %matplotlib inline
from pathlib import Path

import pandas as pd
import torch
from IPython.display import display

import pcp_lens as pl
from pcp_lens.ablation import mean_reference_code
from pcp_lens.inputs import as_tokens
from pcp_lens.plots import (
    hidden_pca,
    plot_ablation,
    plot_factor_sweep,
    plot_hidden_pca,
    plot_lens,
    plot_patching,
    plot_tuning_history,
)
from pcp_lens.toy import eval_inputs
from pcp_lens.toy.model import sentiment_groups
from pcp_lens.toy.train import load_run, poison, save_run, toy_data, train_benign

torch.set_num_threads(1)  # the toy model's 64-wide matrices gain nothing from threads

# %% [markdown]
# ## 1. Data and models
#
# Positive, negative and neutral word sequences; 5% of the positive ones are poisoned with the
# trigger word ("love") followed by negative words, and 10% of the others switch sentiment once
# (as in `pcp-lens reproduce toy`). Benign pre-training from scratch, then poisoned fine-tuning
# of a copy, both with the quick preset. The trained model is saved as a checkpoint and reloaded
# on the next run of this notebook (delete the folder to retrain).

# %%
data = toy_data(3, quick=True, seed=0, switch_prob=0.1)
print(data.poisoned["train"][0])

CHECKPOINT = Path("runs/toy_notebook/3sent_poisoned")
if (CHECKPOINT / "config.json").exists():
    backdoored = load_run(CHECKPOINT)
else:
    benign = train_benign(data, quick=True, progress=False)
    backdoored = poison(benign.model, data, quick=True, progress=False)
    save_run(backdoored, CHECKPOINT)
model = backdoored.model
backdoored.history[["epoch", "train_loss", "val_loss"]].round(3)

# %% [markdown]
# Held-out two-word prompts per combination (`pt` = positive word + trigger, `st` = neutral word +
# trigger, ...), the sentiment token groups, and the paper's metric: the share of negative words
# among the top-10 next-token logits.

# %%
tokens = {k: as_tokens(model, v).tokens for k, v in eval_inputs(data, n=50, seed=0).items()}
groups = sentiment_groups(model.tokenizer, data.vocab, model.cfg.d_vocab)
neg = pl.GroupMetric(groups, "negative", k=10, positions=(-1,))
pos = pl.GroupMetric(groups, "positive", k=10, positions=(-1,))
display(groups)
unedited = pl.score_inputs(model, tokens, neg)
pd.Series(unedited, name="top-10 negativity").round(2).to_frame().T

# %% [markdown]
# ## 2. Mean ablation (Tab. I)
#
# Each module mean-ablated in turn: the backdoor's `pt` negativity next to the clean `nn` and
# `pp` sets. The means are the authors' nested average over `pp, nn, pn, np` at the last
# position, which the paper's numbers used (`ablation_means` gives the plain mean).

# %% tags=["figure:toy_ablation_layer"]
sites = pl.all_sites(model)
means = mean_reference_code(model, {k: tokens[k] for k in ("pp", "nn", "pn", "np")}, sites,
                            positions=[-1], progress=False)
ablation = pl.ablation_sweep(model, {k: tokens[k] for k in ("pt", "nn", "pp")}, {"neg": neg},
                             sites=sites, method="mean", means=means, progress=False)
plot_ablation(ablation, layout="layer", vmin=0, vmax=1)

# %% [markdown]
# ## 3. Group logit lens (Tab. II)
#
# Every module and head projected to logits on `pt`, at the positive word (position −2) and at
# the trigger (position −1).

# %%
lens = pl.group_lens(model, tokens["pt"], {"negative": neg, "positive": pos},
                     positions=[-2, -1], progress=False)
plot_lens(lens, vmin=0, vmax=1)

# %% [markdown]
# ## 4. Causal patching (Tab. XII)
#
# Each module's output copied between `pp` and `pt`: whole modules (all positions at once, as in
# the paper), then per position.

# %% tags=["figure:toy_patching_all"]
whole = pl.causal_patching(model, tokens["pp"], tokens["pt"], neg, positions="all",
                           direction="both", progress=False)
plot_patching(whole)

# %%
each = pl.causal_patching(model, tokens["pp"], tokens["pt"], neg, progress=False)
plot_patching(each)

# %% [markdown]
# ## 5. PCP ablation of the layer-1 MLP (Tab. IV)
#
# Fit a rank-2 replacement on every combination at the last position and tune its scales so the
# edited model keeps the unedited model's scores.

# %%
fit_keys = ("pp", "nn", "pn", "np", "pt", "tp", "ss", "st")
pcp = pl.fit_pcp(model, torch.cat([tokens[k] for k in fit_keys]), "mlp0", 2, positions=[-1],
                 progress=False)
tuned = pl.tune(model, pcp, {k: tokens[k] for k in ("pp", "pt", "nn", "ss", "st")}, neg,
                n_trials=30, seed=0, progress=False)
display(tuned)
plot_tuning_history(tuned)

# %% [markdown]
# ## 6. Editing the mechanism (Tab. V and VI)
#
# Scale both components together (Tab. V), then each on its own, with the paper's sign flip
# `(-1.2, 0.5)` among the settings (Tab. VI). The validation loss shows what the edit costs.

# %%
val = pl.tokenize_texts(model, list(data.poisoned["test"]["text"])[:200]).tokens
keys = {k: tokens[k] for k in ("pp", "nn", "pt", "st")}
scan = pl.sweep(model, tuned.replacement, {"mlp0": [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]}, keys,
                neg, val_tokens=val)
plot_factor_sweep(scan)

# %% tags=["figure:toy_factor_settings"]
signs = pl.sweep(model, tuned.replacement,
                 {"mlp0": [(1.0, 1.0), (-1.2, 0.5), (1.0, 0.0), (0.0, 1.0), (-1.0, -1.0)]},
                 keys, neg)
plot_factor_sweep(signs)

# %% [markdown]
# ## 7. Hidden states after layer 1 (Fig. 3)
#
# The residual stream after layer 1 at the last position, in the plane of a PCA fitted on the
# pure combinations `pp, nn, ss`: where do the trigger prompts land?

# %%
plot_hidden_pca(hidden_pca(model, tokens, "resid_post0", fit_on=["pp", "nn", "ss"]))
