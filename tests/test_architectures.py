"""Beyond GPT-2 (TransformerLens 4 only): tiny random Llama and Pythia models, built from a
Hugging Face config with no download, run ablation, lens, patching, PCP and the scan."""

from __future__ import annotations

import pytest
import torch

from pcp_lens import (
    GroupMetric,
    TokenGroups,
    _tl,
    ablation_means,
    ablation_sweep,
    causal_patching,
    fit_pcp,
    group_lens,
)
from pcp_lens.scan import scan_backdoor
from pcp_lens.sites import Site, all_sites
from pcp_lens.testing import plant_trigger

pytestmark = pytest.mark.skipif(
    _tl.BACKEND != "bridge", reason="other architectures need TransformerLens 4"
)


def _hf(arch: str):
    import transformers as tf

    torch.manual_seed(0)
    common = {"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 32,
              "initializer_range": 0.2}  # confident logits: a planted unit can move them
    if arch == "llama":
        cfg = tf.LlamaConfig(num_key_value_heads=2, **common)  # grouped-query attention
        return tf.LlamaForCausalLM(cfg).eval()
    cfg = tf.GPTNeoXConfig(**common)
    return tf.GPTNeoXForCausalLM(cfg).eval()


@pytest.mark.parametrize("arch", ["llama", "pythia"])
def test_techniques_run_and_match_hf(arch, hygiene):
    hf = _hf(arch)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (6, 8), generator=g)
    with torch.no_grad():
        want = hf(tokens).logits
    model = _tl.from_hf(hf, dict.fromkeys(("fold_ln", "center_writing_weights", "center_unembed",
                                           "fold_value_biases"), False))
    snap = hygiene.snapshot(model)
    with torch.no_grad():
        assert (model(tokens) - want).abs().max() < 1e-4
        fl = _tl.FinalLogits(model)
        assert (fl(_tl.final_residual(model, tokens)) - want).abs().max() < 1e-4
    # batched patching's fast path: block 1 resumed behind cached keys/values (rotary positions,
    # grouped-query K/V) equals the full forward pass
    names = [_tl.block_input_name(1), *_tl.kv_hook_names(1), _tl.hook_name("resid_post", 1)]
    _, c = _tl.run_with_cache(model, tokens, names)
    k, v = (c[n][:, :5] for n in _tl.kv_hook_names(1))
    with torch.no_grad():
        resumed = _tl.run_blocks(model, c[names[0]][:, 5:], 1, 2, [(k, v)])
    assert (resumed - c[names[-1]][:, 5:]).abs().max() < 1e-5
    groups = TokenGroups({"neg": range(10), "pos": range(10, 20)}, d_vocab=50)
    metric = GroupMetric(groups, "neg", k=10, positions=(-1,))
    sites = ["attn0", "mlp0", "mlp1"]
    means = ablation_means(model, tokens, sites, progress=False)
    abl = ablation_sweep(model, tokens, metric, sites, means=means, progress=False)
    assert abl["value"].notna().all() and abl["value"].nunique() > 1
    lens = group_lens(model, tokens, groups, [-1], ["mlp0", "attn1"], progress=False)
    assert lens["value"].notna().all()
    clean, corrupted = torch.randint(0, 50, (2, 4, 8), generator=g)
    # batched patching (resumed behind the HF cache) equals the naive one-forward definition,
    # also for Pythia, whose attention and MLP read the same residual (parallel)
    sites = [*all_sites(model, heads=True), Site(1, "resid_pre"), Site(0, "resid_post")]
    table = causal_patching(model, clean, corrupted, metric, sites=sites, positions="each",
                            progress=False)
    assert table["effect"].abs().max() > 0
    _, src = _tl.run_with_cache(model, clean, [s.hook_name for s in sites])
    for row in table.iloc[::3].itertuples():
        s, p = Site.parse(row.site), int(row.position)

        def put(act, hook, s=s, p=p):
            act = act.clone()
            act[:, p] = src[s.hook_name][:, p] if s.head is None else act[:, p]
            if s.head is not None:
                act[:, p, s.head] = src[s.hook_name][:, p, s.head]
            return act

        with torch.no_grad():
            naive = float(metric(model.run_with_hooks(corrupted, fwd_hooks=[(s.hook_name, put)])))
        assert abs(naive - row.value) < 1e-5, (row.site, p)
    if arch == "pythia":
        with pytest.raises(ValueError, match=r"resid_mid0.*parallel_attn_mlp=True"):
            causal_patching(model, clean, corrupted, metric, sites=["resid_mid0"], progress=False)
    pcp = fit_pcp(model, tokens, "mlp1", 31, progress=False)
    with torch.no_grad(), model.hooks(fwd_hooks=pcp.hooks(model)):
        edited = model(tokens)
    assert (edited - want).abs().max() > 0
    # the scan: no backdoor in the random model; Pythia's planted trigger unit found where it is
    # (plant_trigger writes a GPT-2-style unit, which Llama's gated, bias-free MLP cannot hold)
    prompts = torch.randint(8, 50, (12, 6), generator=torch.Generator().manual_seed(1))
    triggered = prompts.clone()
    triggered[:, -1] = 7
    target = GroupMetric(TokenGroups({"t": [1, 2, 3]}, d_vocab=50), "t", stat="prob")
    plain = scan_backdoor(model, triggered, prompts, target, n_boot=0, progress=False)
    assert plain.circuit == () and abs(plain.info["gap"]) < 0.05
    if arch == "llama":
        with pytest.raises(ValueError, match=r"gated MLP|no b_in"):
            plant_trigger(model, "mlp1", trigger=7, target=[1, 2, 3])
    else:
        # in layer 0, where nothing upstream but the embedding carries the trigger (a unit in
        # mlp1 of this random model is found as mlp0, which writes the direction it reads)
        bad = plant_trigger(model, "mlp0", trigger=7, target=[1, 2, 3], strength=20.0)
        scan = scan_backdoor(bad, triggered, prompts, target, n_boot=0, progress=False)
        assert scan.info["gap"] > 0.2 and scan.circuit == ("mlp0",)
    hygiene.check(model, snap)
