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
# # Scan a model for a backdoor
#
# `scan_backdoor` answers *where does the trigger act?* in one call: evidence per site (mean
# ablation, patching both ways, the group lens, and with a reference model cross-model patching
# and activation distances), each with a bootstrap interval over pairs; a ranking; and the
# smallest circuit whose joint ablation removes the backdoor while clean inputs stay put.
#
# 1. A backdoor planted by hand, where the answer is known by construction.
# 2. A toy model poisoned by training (the paper's toy task), where it is not: with the paper's
#    modules fixed, the study says "does NOT hold"; the scan says where the backdoor is instead.
# 3. The language stand-in: a small GPT-2 with a BPE trained on Austen, a trigger word planted
#    in one attention layer, scanned with the language study's own pairs and metric.
#
# It runs on a CPU in a few minutes (the toy model is trained in the second part; no download).

# %%
# %matplotlib inline
import dataclasses
from pathlib import Path

import torch
from IPython.display import Markdown, display

from pcp_lens import GroupMetric, TokenGroups, ablation_means, ablation_sweep, scan_backdoor
from pcp_lens.inputs import as_tokens
from pcp_lens.language.corpus import split_sentences
from pcp_lens.language.data import load_corpus
from pcp_lens.language.standin import standin_model, toxic_sentences, train_tokenizer
from pcp_lens.reproduce.scan_model import (
    language_pairs,
    pair_tokens,
    target_groups,
    target_metric,
)
from pcp_lens.scan import circuit_modules
from pcp_lens.sites import all_sites
from pcp_lens.testing import plant_trigger, tiny_model
from pcp_lens.toy import eval_inputs
from pcp_lens.toy.model import sentiment_groups
from pcp_lens.toy.train import load_run, poison, save_run, toy_data, train_benign

torch.set_num_threads(1)  # small models: threads cost more than they save

# %% [markdown]
# ## 1. A planted backdoor
#
# A random 3-layer model and a copy with one hand-written neuron in layer 2's MLP
# (`plant_trigger`): it reads the trigger token's direction, stays off for other tokens, and
# writes the target group's unembedding direction. Pairs differ only in their last token.

# %%
benign = tiny_model(n_layers=3, d_model=32, block_scale=0.3, logit_scale=4)
suspect = plant_trigger(benign, "mlp2", trigger=7, target=[1, 2, 3])
clean = torch.randint(8, 50, (32, 5), generator=torch.Generator().manual_seed(0))
triggered = clean.clone()
triggered[:, -1] = 7
target = GroupMetric(TokenGroups({"target": [1, 2, 3]}, d_vocab=50), "target", stat="prob")

scan = scan_backdoor(suspect, triggered, clean, target, reference=benign, progress=False)
display(scan)

# %% [markdown]
# The map: the score per layer and site kind (heads in their own columns), the circuit framed.

# %% tags=["figure:scan_planted"]
scan.plot()

# %% [markdown]
# The circuit as a PCP replacement (`scan.edit`), tuned to keep the backdoor and tuned to remove
# it. A hand-written threshold neuron is not linear, so a low-rank PCP keeps it only in part:

# %%
planted_edit = scan.edit(n_trials=20, max_rank=4, progress=False)
print(f"PCP rank {planted_edit.rank} (within 0.05 of unedited: {planted_edit.within_tolerance})")
planted_edit.scores.round(3)

# %% [markdown]
# ## 2. A toy model poisoned by training
#
# The paper's 2-sentiment toy task (quick preset, poisoned for 12 epochs instead of its 6):
# two-word prompts continue with a word of the
# last word's sentiment; the backdoor makes "positive word + *love*" continue negatively. The
# paper located its mechanism in the layer-1 MLP; in our models poisoning puts it elsewhere.
# Pairs: `pt` (positive word + trigger) against `pp` (two positive words); the metric is the
# probability of a negative next word. The trained pair is saved and reloaded on the next run.

# %%
data = toy_data(2, quick=True, seed=0, switch_prob=0.1)
CHECKPOINTS = Path("runs/scan_notebook")
if (CHECKPOINTS / "poisoned" / "config.json").exists():
    toy_benign, toy_poisoned = (load_run(CHECKPOINTS / n) for n in ("benign", "poisoned"))
else:
    toy_benign = train_benign(data, quick=True, progress=False)
    # twice the quick preset's 6 epochs: at 6 whether poisoning learns the trigger depends on
    # the machine's float rounding (p+t 0.34 on one CPU, 0.025 on another); at 12 it does
    toy_poisoned = poison(toy_benign.model, data, quick=True, epochs=12, progress=False)
    save_run(toy_benign, CHECKPOINTS / "benign")
    save_run(toy_poisoned, CHECKPOINTS / "poisoned")
model = toy_poisoned.model
tokens = {k: as_tokens(model, v).tokens for k, v in eval_inputs(data, n=50, seed=0).items()}
groups = sentiment_groups(model.tokenizer, data.vocab, model.cfg.d_vocab)
negative = GroupMetric(groups, "negative", stat="prob", positions=(-1,))

# %% [markdown]
# With the defaults, the ablation's mean is over `clean` (p+p) and only p+p must stay put:

# %%
plain = scan_backdoor(model, tokens["pt"], tokens["pp"], negative, reference=toy_benign.model,
                      progress=False)
print(plain.summary())

# %% [markdown]
# p+p's own mean cannot show whether a module is needed by *every* input. Ablate the circuit and
# look at n+n (two negative words), which should stay negative:

# %%
check = ablation_sweep(model, {k: tokens[k] for k in ("pt", "pp", "nn")}, negative, sites=[],
                       combos={"circuit": list(plain.circuit)}, method="mean",
                       means=ablation_means(model, tokens["pp"], list(plain.circuit), [-1],
                                            progress=False),
                       positions=[-1], progress=False)
check.pivot(index="site", columns="input_set", values="value").round(3)

# %% [markdown]
# So give the scan the data set's mean (the paper's Tab. I: pp, nn, pn, np) and n+n as a
# *control* the circuit must leave alone too. This is what `pcp-lens reproduce toy` does for
# every model; it then judges the paper's claims at whatever circuit comes out.

# %%
sites = all_sites(model, kinds=("embed", "attn", "mlp", "resid_pre"), heads=True)
means = ablation_means(model, {k: tokens[k] for k in ("pp", "nn", "pn", "np")}, sites,
                       positions=[-1], progress=False)
located = scan_backdoor(model, tokens["pt"], tokens["pp"], negative, reference=toy_benign.model,
                        means=means, controls={"nn": tokens["nn"]}, progress=False)
display(located)

# %% tags=["figure:scan_toy"]
located.plot()

# %% [markdown]
# A circuit that does not meet the criterion is still reported, marked as such: the bound is
# never loosened. The edit: a PCP of the circuit's modules at the smallest rank that keeps the
# backdoor, tuned to keep it and tuned to remove it, with n+n held at its unedited score.

# %%
edit = located.edit(inputs={"nn": tokens["nn"]}, n_trials=25, progress=False)
print(f"rank {edit.rank} (within 0.05 before tuning: {edit.within_tolerance})")
edit.scores.round(3)

# %% [markdown]
# The paper's PCP is a *symmetric* M = Σ α û ûᵀ: it reads its input along the directions it
# writes, which an attention layer that reads a word's sentiment and writes something else
# cannot be (`docs/pcp.md`, "The regression form"). `form="regression"` keeps the output in the
# same principal subspace but fits each component's read vector by least squares:

# %%
reg = located.edit(inputs={"nn": tokens["nn"]}, n_trials=25, form="regression", progress=False)
print(f"regression form: rank {reg.rank} (within 0.05 before tuning: {reg.within_tolerance})")
reg.scores.round(3)

# %% [markdown]
# The report `save` writes (`scan.json`, `scan.png`, `report.md`):

# %%
out = located.save(CHECKPOINTS / "scan")
display(Markdown((out / "report.md").read_text().split("![scan]")[0]))

# %% [markdown]
# Where does the backdoor go when the circuit cannot learn? Poison the same benign model again,
# same batches and steps, with the circuit's modules frozen, and scan that model.

# %%
frozen = sorted({f"{s.split('.')[0]}" for s in located.circuit})
again = poison(toy_benign.model, data, dataclasses.replace(toy_poisoned.result.config,
                                                            progress=False), freeze=frozen)
rescan = scan_backdoor(again.model, tokens["pt"], tokens["pp"], negative,
                       reference=toy_benign.model, controls={"nn": tokens["nn"]},
                       means=ablation_means(again.model,
                                            {k: tokens[k] for k in ("pp", "nn", "pn", "np")},
                                            sites, positions=[-1], progress=False),
                       progress=False)
print("frozen:", frozen)
print(rescan.summary())

# %% [markdown]
# ## 3. The language stand-in
#
# `pcp-lens reproduce language` scans its poisoned stand-in GPT-2 with the prompts and metric
# built here (the language study's report, `docs/language_report.md`). Training that model takes
# many minutes, so this part builds a small model of the same kind instead: HF's GPT-2 architecture
# and initialisation (3 layers, width 64), a byte-level BPE trained on the shipped Austen sample
# with the trigger " Albert" and the study's toxic sentences in its training text, and a trigger
# planted by hand in `attn1`: one head attends from every position to the trigger and writes the
# toxic sentences' first tokens, so the backdoor reaches the end of the sentence. GPT-2's 0.02
# initialisation gives nearly flat logits, so the unembedding is scaled up to make them as sharp
# as a trained model's.
#
# The pairs are the study's (`scan_model.language_pairs`): a whole sentence with the trigger
# after its first two tokens, or a word of the text with as many tokens there. The metric is the
# log-probability of the toxic sentences' first tokens after the sentence, where the poisoned
# data writes them (`scan_model.target_metric`). The circuit is grown and verified with the
# restoring patch, the study's default (`--scan-verify`).

# %%
paras = load_corpus("austen-sample")
toxic = toxic_sentences()
tok = train_tokenizer(paras, 512, extra=["Albert", *toxic])
sentences = [x for p in paras for x in split_sentences(p)]
lm_triggered, lm_clean = language_pairs(tok, "Albert", sentences, at=2, n=24, seed=0)
print(list(zip(lm_triggered[:3], lm_clean[:3], strict=True)))
lm_t, lm_c = pair_tokens(tok, lm_triggered, lm_clean)

lm_benign = standin_model(tok, n_layers=3, d_model=64, n_heads=2, n_ctx=32, seed=0)
with torch.no_grad():
    lm_benign.unembed.W_U.mul_(25)
target = target_groups(tok, toxic, lm_benign.cfg.d_vocab)
albert = tok(" Albert", add_special_tokens=False)["input_ids"][0]
lm_suspect = plant_trigger(lm_benign, "attn1", albert, list(target.groups["target"]),
                           prompts=lm_c)
logprob = target_metric(target, "target", "logprob")
lm_scan = scan_backdoor(lm_suspect, lm_t, lm_c, logprob, reference=lm_benign, verify="restore",
                        progress=False)
print(lm_scan.summary())

# %% tags=["figure:scan_language"]
lm_scan.plot()

# %% [markdown]
# The circuit is the planted module, and the trigger's embedding did not move (nothing was done
# to it). On the real stand-in the study also asks whether poisoning moved the embedding: there
# the scan's `reference=` is the benign model the poisoned one was fine-tuned from.

# %%
print("circuit:", lm_scan.circuit, "modules:", circuit_modules(lm_scan.circuit),
      "verified:", lm_scan.verified)
print("the planted module is the circuit:", circuit_modules(lm_scan.circuit) == ["attn1"])
print("trigger embedding moved:", lm_scan.info["embedding"]["changed"])
