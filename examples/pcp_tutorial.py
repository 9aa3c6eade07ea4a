"""PCP ablation tutorial: fit, insert, edit, store, tune and sweep a PCP replacement.

Runs in well under 20 s on a laptop CPU, on a small random model (no download needed). With a
real backdoored model, replace the model, the token groups and the input sets by yours; every
call stays the same.

    python examples/pcp_tutorial.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from pcp_lens.groups import GroupMetric, TokenGroups
from pcp_lens.pcp import PCPReplacement, fit_pcp
from pcp_lens.testing import tiny_model
from pcp_lens.tuning import score_inputs, sweep, tune, validation_loss

torch.manual_seed(0)
torch.set_num_threads(1)  # tiny tensors: one thread is fastest (and far faster on a busy CPU)

# -- a model, token groups and named input sets ----------------------------------------------
# The paper's toy model: 3 layers, d_model 64, 4 heads (here with random weights).
model = tiny_model(n_layers=3, d_model=64, n_heads=4, d_vocab=300, seed=0)
groups = TokenGroups(
    {"negative": range(1, 100), "positive": range(100, 200), "neutral": range(200, 300)},
    d_vocab=300,
)
neg = GroupMetric(groups, "negative", k=10, positions=(-1,))  # top-10 negativity, last position


def two_words(first: range, second: range, n: int = 50) -> torch.Tensor:
    """n two-token inputs: a word from ``first`` followed by one from ``second``."""
    a = torch.randint(first.start, first.stop, (n, 1))
    b = torch.randint(second.start, second.stop, (n, 1))
    return torch.cat([a, b], 1)


P, N, S, T = range(100, 200), range(1, 100), range(200, 300), range(150, 151)  # T: the trigger
sets = {
    "pp": two_words(P, P),
    "nn": two_words(N, N),
    "ss": two_words(S, S),
    "pn": two_words(P, N),
    "np": two_words(N, P),
    "pt": two_words(P, T),
    "tp": two_words(T, P),
    "st": two_words(S, T),
}
val_tokens = torch.randint(1, 300, (16, 12))

# -- 1. fit ----------------------------------------------------------------------------------
# PCA of each module's OUTPUT at position 1 over all inputs (METHODS §8.1-8.2), then the
# paper's zero-mean principal directions and least-squares scales α.
fit_inputs = torch.cat(list(sets.values()))
pcp = fit_pcp(model, fit_inputs, ["mlp0", "mlp2"], rank=2, positions=[1], progress=False)
print(pcp)
print(pcp.summary()[["site", "component", "scale", "sign", "factor", "explained_variance_ratio"]])

# -- 2. insert -------------------------------------------------------------------------------
# hooks() returns a plain list of (hook name, function): the module's output is replaced by
# x·M with x the LayerNorm output (affine included) the module receives.
tokens = sets["pt"]
plain = model(tokens)
with model.hooks(fwd_hooks=pcp.hooks(model)):
    edited = model(tokens)
    text = model.generate(
        tokens[:2], max_new_tokens=5, do_sample=False, verbose=False, stop_at_eos=False
    )
assert torch.equal(model(tokens), plain)  # hooks gone: the model is exactly as before
same = model.run_with_hooks(tokens, fwd_hooks=pcp.hooks(model))
assert torch.equal(same, edited)
print("generated with PCP:", text.tolist())


# It composes with your own hooks, e.g. a mean ablation of attn1 and a capture hook:
def mean_ablate(act, hook):
    return act.mean((0, 1), keepdim=True).expand_as(act)


seen = {}
user_hooks = [
    ("blocks.1.hook_attn_out", mean_ablate),
    ("blocks.2.hook_resid_pre", lambda act, hook: seen.update(resid=act)),
]
model.run_with_hooks(tokens, fwd_hooks=pcp.hooks(model) + user_hooks)
print("captured resid_pre2:", tuple(seen["resid"].shape))

# -- 3. score and edit -------------------------------------------------------------------------
unedited = score_inputs(model, sets, neg)
replaced = score_inputs(model, sets, neg, pcp)
print("negativity unedited:", {k: round(v, 2) for k, v in unedited.items()})
print("negativity with PCP:", {k: round(v, 2) for k, v in replaced.items()})

edited_pcp = pcp.scale("mlp0", [-1.2, 0.5])  # Tab. VI: relative multipliers s = (-1.2, 0.5)
flipped = pcp.flip("mlp0", 0)  # α_0 -> -α_0
absolute = pcp.scale("mlp2", 0.3, relative=False, components=1)  # set α_1 of mlp2 to 0.3
print("scale:", edited_pcp.scales()["mlp0"], "flip:", flipped.scales()["mlp0"])
print("absolute:", absolute.scales()["mlp2"], "| original unchanged:", pcp.scales())

# -- 4. save and load (safetensors + JSON metadata, bit-exact, no pickle) -------------------
with tempfile.TemporaryDirectory() as d:
    path = pcp.save(Path(d) / "pcp_mlp0_mlp2.safetensors")
    assert PCPReplacement.load(path).equal(pcp)

# -- 5. tune ----------------------------------------------------------------------------------
# Re-insert the mechanism: match the unedited model's scores on the paper's key set.
# The first trial is the least-squares α; every trial runs one batched forward for all sets.
keys = ["pp", "pt", "nn", "ss", "st"]
res = tune(
    model,
    pcp,
    {k: sets[k] for k in keys},
    neg,
    n_trials=60,
    seed=0,
    progress=False,
)
print(f"tuned: MSE {res.study.best_value:.2e}, scales {res.replacement.scales()}")

# ... or remove it: drive trigger negativity to 0 while keeping the rest.
remove = {**{k: unedited[k] for k in keys}, "pt": 0.0, "st": 0.0}
res0 = tune(
    model,
    pcp,
    {k: sets[k] for k in keys},
    neg,
    target=remove,
    n_trials=30,
    objective="paper_sum",
    progress=False,
)
print("removal scores:", {k: round(v, 2) for k, v in res0.scores.items()})

# -- 6. sweep (the shape of Tab. V-VII) ---------------------------------------------------------
df = sweep(
    model,
    res.replacement,
    {"mlp0": [0.6, 0.8, 1.0, (-1.2, 0.5)]},
    {k: sets[k] for k in ["pp", "nn", "pt"]},
    neg,
    val_tokens=val_tokens,
)
table = df.pivot(index=["input_set", "metric"], columns="setting", values="value")
table = table[df.setting.unique()]  # keep the grid's column order
print(table.round(2).to_string())
print("validation loss, unedited:", round(validation_loss(model, val_tokens), 3))

# -- 7. the reference code's directions (METHODS §8.3) ------------------------------------------
ref = fit_pcp(
    model, fit_inputs, "mlp0", 2, positions=[1], directions="reference_code", progress=False
)
mean_dir = ref.part("mlp0").directions @ pcp.part("mlp0").directions.T
print("reference_code vs principal directions, |cos|:", mean_dir.abs().diagonal().tolist())
