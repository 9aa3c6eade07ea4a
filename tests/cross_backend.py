"""Tables of every technique on one Hugging Face folder, as JSON (run under either backend).

``python tests/cross_backend.py FOLDER OUT.json [--processing]`` loads ``FOLDER`` with
:func:`pcp_lens.load_model` under whichever TransformerLens is installed, and writes the
ablation, lens, patching, PCP and generation tables, and (without processing) a backdoor scan of a
planted copy of the model. ``tests/test_cross_backend.py`` runs it under
TransformerLens 3 and 4 and compares the numbers.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch


def save_gpt2(folder: str, seed: int = 0) -> None:
    """A random GPT-2 (2 layers, d_model 32, vocab 60) with random LayerNorms and biases."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=60, n_positions=16,
                   initializer_range=0.2)
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif ".ln_" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    hf.save_pretrained(folder)


def _records(df: Any) -> list[dict[str, Any]]:
    return json.loads(df.reset_index(drop=True).to_json(orient="records"))


def tables(folder: str, processing: bool) -> dict[str, Any]:
    """Every table, as JSON-able records (numbers and labels only)."""
    from pcp_lens import (
        GroupMetric,
        TokenGroups,
        _tl,
        ablation_means,
        ablation_sweep,
        attribution_patching,
        causal_patching,
        fit_pcp,
        group_lens,
        load_model,
    )
    from pcp_lens.language.generate import generate

    torch.set_num_threads(1)
    model = load_model(folder, processing=processing, device="cpu")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 60, (8, 10), generator=g)
    clean, corrupted = torch.randint(0, 60, (2, 4, 10), generator=g)
    groups = TokenGroups({"neg": range(10), "pos": range(10, 20)}, d_vocab=60)
    metric = GroupMetric(groups, "neg", k=10, positions=(-1,))
    out: dict[str, Any] = {"backend": _tl.BACKEND}
    sites = ["attn0", "mlp0", "attn1.h2", "mlp1"]
    means = ablation_means(model, tokens, sites, progress=False)
    out["ablation"] = _records(
        ablation_sweep(model, tokens, metric, sites, means=means, progress=False)
    )
    out["lens"] = _records(
        group_lens(model, tokens, groups, [-1, 3], ["attn0.h1", "mlp0", "mlp1"],
                   progress=False)
    )
    out["patching"] = _records(
        causal_patching(model, clean, corrupted, metric, positions="each", progress=False)
    )
    # every site and head, the three estimators; the heads' estimates read hook_z's gradient
    prob = GroupMetric(groups, "neg", stat="prob", positions=(-1,))  # differentiable
    out["attribution"] = {
        m: _records(attribution_patching(model, clean, corrupted, prob, method=m,
                                         progress=False))
        for m in ("atp", "atp*", "relp")
    }
    pcp = fit_pcp(model, tokens, ["mlp0", "attn1"], 3, progress=False)
    with torch.no_grad(), model.hooks(fwd_hooks=pcp.hooks(model)):
        edited = model(tokens)[:, -1]
    out["pcp"] = {
        "directions": {p.site.name: p.directions.abs().tolist() for p in pcp},
        "scales": {p.site.name: p.scales.tolist() for p in pcp},
        "logits": edited.tolist(),
    }
    prompts = tokens[:3, :4]
    new = generate(model, prompts, 6, hooks=pcp.hooks(model))
    plain = generate(model, prompts, 6, use_cache=False)
    out["generation"] = {"cached_with_pcp": new.tolist(), "uncached": plain.tolist()}
    out["finetune_export"] = finetune_export(model, tokens)
    if not processing:
        out["scan"] = scan_table(model)
    return out


def finetune_export(model: Any, tokens: torch.Tensor) -> dict[str, Any]:
    """Two fine-tuning steps of a copy with ``mlp0`` frozen, then its HF GPT-2 export's logits.

    The exported model is a plain ``GPT2LMHeadModel``, the same class on both backends.
    """
    from pcp_lens import _tl
    from pcp_lens.language.finetune import finetune_text
    from pcp_lens.language.hf import hf_from_hooked
    from pcp_lens.training import TextBatch

    tuned = _tl.copy_model(model)
    before = {k: v.detach().clone() for k, v in _tl.named_parameters(tuned).items()}
    batch = TextBatch(tokens, torch.ones_like(tokens, dtype=torch.bool))
    res = finetune_text(tuned, batch, lr=1e-3, max_steps=2, batch_size=8, dropout=0.0,
                        freeze=("mlp0",), progress=False, seed=0)
    after = _tl.named_parameters(tuned)
    moved = {k: float((after[k].detach() - before[k]).abs().max()) for k in before}
    with torch.no_grad():
        logits = hf_from_hooked(tuned).eval()(tokens[:2]).logits[:, -1]
    # TL 3 also freezes its b_U, a parameter the bridge's GPT-2 does not have
    frozen = sorted(k for k in res.frozen if k != _tl.B_U_NAME)
    return {
        "frozen": frozen,
        "frozen_moved": max(moved[k] for k in res.frozen),
        "others_moved": min(v for k, v in moved.items() if k not in res.frozen) > 0,
        "exported_logits": logits.log_softmax(-1).tolist(),
    }


def scan_table(model: Any) -> dict[str, Any]:
    """The scan of a copy of ``model`` with a backdoor planted in ``mlp0`` (trigger 7)."""
    from pcp_lens import GroupMetric, TokenGroups
    from pcp_lens.scan import scan_backdoor
    from pcp_lens.testing import plant_trigger

    bad = plant_trigger(model, "mlp0", trigger=7, target=[1, 2, 3], strength=20.0)
    clean = torch.randint(8, 60, (12, 5), generator=torch.Generator().manual_seed(1))
    triggered = clean.clone()
    triggered[:, -1] = 7
    metric = GroupMetric(TokenGroups({"t": [1, 2, 3]}, d_vocab=60), "t", stat="prob")
    scan = scan_backdoor(bad, triggered, clean, metric, reference=model, n_boot=20,
                         progress=False)
    table = scan.table.drop(columns=[c for c in scan.table if c.endswith("_pairs")])
    return {"table": _records(table), "circuit": list(scan.circuit), "gap": scan.info["gap"]}


if __name__ == "__main__":
    with open(sys.argv[2], "w") as f:
        json.dump(tables(sys.argv[1], "--processing" in sys.argv), f)
