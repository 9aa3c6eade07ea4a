"""The toy backdoor study, step by step with the library's functions (quick sizes, ~1-2 min).

`pcp-lens reproduce toy` runs the same steps at full size and writes a report; this script shows
how to do each one yourself. Run: python examples/toy_study_tutorial.py
"""

import torch

from pcp_lens import (
    GroupMetric,
    ablation_sweep,
    ablation_table,
    causal_patching,
    fit_pcp,
    group_lens,
    lens_table,
    score_inputs,
    tune,
)
from pcp_lens.ablation import mean_reference_code
from pcp_lens.inputs import as_tokens
from pcp_lens.toy import eval_inputs
from pcp_lens.toy.model import sentiment_groups
from pcp_lens.toy.train import poison, toy_data, train_benign

torch.set_num_threads(1)  # the toy model's 64-wide matrices gain nothing from threads

# 1. Data: 3 sentiments; 5% of positive sequences poisoned ("... love <negative words>"); 10% of
#    the others switch sentiment once, so the last word, not the context, decides the next word.
data = toy_data(3, quick=True, seed=0, switch_prob=0.1)
print(data.poisoned["train"][0])

# 2. Models: benign pre-training from scratch, then poisoned fine-tuning (a copy).
benign = train_benign(data, quick=True, progress=False)
backdoored = poison(benign.model, data, quick=True, progress=False).model

# 3. Held-out two-word inputs per combination (pp, nn, pt = positive word + trigger, ...).
inputs = eval_inputs(data, n=50, seed=0)
tokens = {k: as_tokens(backdoored, v).tokens for k, v in inputs.items()}
groups = sentiment_groups(backdoored.tokenizer, data.vocab, backdoored.cfg.d_vocab)
neg = GroupMetric(groups, "negative", k=10, positions=(-1,))  # top-10 negativity
pos = GroupMetric(groups, "positive", k=10, positions=(-1,))
print({k: round(v, 2) for k, v in score_inputs(backdoored, tokens, neg).items()})

# 4. Tab. I: mean-ablate each module. The paper's numbers came from the authors' nested average
#    over pp, nn, pn, np (in effect the n+p activation); ablation_means is the plain mean.
means = mean_reference_code(backdoored, {k: tokens[k] for k in ("pp", "nn", "pn", "np")},
                            ["attn0", "mlp0", "attn1", "mlp1", "attn2", "mlp2"], positions=[-1],
                            progress=False)
sweep = ablation_sweep(backdoored, {"pt": tokens["pt"]}, {"neg": neg}, method="mean",
                       means=means, progress=False)
print(ablation_table(sweep, layout="layer").round(2))

# 5. Tab. II: group logit lens of every module and head on p+t, at the p- and t-token.
lens = group_lens(backdoored, tokens["pt"], {"neg": neg, "pos": pos}, positions=[-2, -1],
                  progress=False)
print(lens_table(lens).round(2).head(12))

# 6. Tab. XII: patch each module's output from p+p into p+t; indirect effects.
patched = causal_patching(backdoored, tokens["pp"], tokens["pt"], neg, positions="all",
                          progress=False)
print(patched[["site", "value", "effect"]].round(2).to_string(index=False))

# 7. Tab. IV: replace the layer-1 MLP by a rank-2 PCP and tune its scales to keep behaviour.
fit_keys = ("pp", "nn", "pn", "np", "pt", "tp", "ss", "st")
pcp = fit_pcp(backdoored, torch.cat([tokens[k] for k in fit_keys]), "mlp0", 2, positions=[-1],
              progress=False)
tuned = tune(backdoored, pcp, {k: tokens[k] for k in ("pp", "pt", "nn", "ss", "st")}, neg,
             n_trials=30, seed=0, progress=False).replacement
print("tuned scales:", tuned.scales())
print({k: round(v, 2) for k, v in score_inputs(backdoored, tokens, neg, tuned).items()})

# 8. Tab. VI: edit the mechanism — scale/flip the two layer-1 components.
edited = tuned.scale("mlp0", (-1.2, 0.5), relative=True)
print({k: round(v, 2) for k, v in score_inputs(backdoored, tokens, neg, edited).items()})
