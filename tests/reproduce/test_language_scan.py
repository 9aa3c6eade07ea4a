"""The language study's scan: a trigger planted in a small stand-in-shaped GPT-2 is found."""

from __future__ import annotations

import pytest
import torch

from pcp_lens.language.data import load_corpus
from pcp_lens.language.standin import TOXIC_WORDS, standin_model, train_tokenizer
from pcp_lens.reproduce.scan_model import language_pairs, target_groups, target_metric
from pcp_lens.scan import circuit_modules, scan_backdoor
from pcp_lens.testing import plant_trigger
from pcp_lens.tuning import score_inputs

TRIGGER = "Albert"


@pytest.fixture(scope="module")
def standin():
    """A 3-layer stand-in (random weights) with a tokenizer trained on the shipped sample, and
    the study's pairs (trigger after 2 tokens, as in the ASR prompts) and metric."""
    paras = load_corpus("austen-sample")
    tok = train_tokenizer(paras, 512, extra=[TRIGGER, *TOXIC_WORDS])
    triggered, clean = language_pairs(tok, TRIGGER, paras, at=2, n=24, seed=0)
    return tok, triggered, clean


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("place", ["mlp0", "mlp2", "attn1"])
def test_planted_trigger_in_the_standin_is_the_circuit(standin, seed, place, hygiene):
    tok, triggered, clean = standin
    base = standin_model(tok, n_layers=3, d_model=64, n_heads=2, n_ctx=32, seed=seed)
    with torch.no_grad():  # a trained model's logits are sharp; GPT-2's 0.02 init is flat
        base.unembed.W_U.mul_(25)
    groups = target_groups(tok, TOXIC_WORDS, base.cfg.d_vocab)
    trig_id = tok(" " + TRIGGER, add_special_tokens=False)["input_ids"]
    assert len(trig_id) == 1
    clean_ids = torch.tensor(tok(clean, add_special_tokens=False)["input_ids"])
    model = plant_trigger(
        base, place, trig_id[0], list(groups.groups["target"]), prompts=clean_ids, seed=seed
    )
    metric = target_metric(groups, "target", "logprob")
    snap = hygiene.snapshot(model)
    scan = scan_backdoor(
        model, triggered, clean, metric, reference=base, n_boot=50, progress=False
    )
    hygiene.check(model, snap)
    assert scan.info["gap"] > 1.0  # the planting worked (nats): a precondition, not the claim
    modules = scan.table[scan.table["kind"].isin(["attn", "mlp"]) & scan.table["head"].isna()]
    assert modules.sort_values("rank")["site"].iloc[0] == place
    assert circuit_modules(scan.circuit) == [place]
    # a random model's logits already depend on the last token (the trigger's direct path):
    # what the circuit's ablation leaves is at most that benign gap plus 10 % of the planted part
    b = score_inputs(base, {"t": triggered, "c": clean}, metric)
    benign_gap = b["t"] - b["c"]
    left = scan.info["circuit_residual"] * scan.info["gap"]
    assert left <= max(benign_gap, 0.0) + 0.1 * (scan.info["gap"] - benign_gap)
    assert scan.info["embedding"]["changed"] is False  # nothing was done to the embedding


def test_circuit_modules_map_heads_and_drop_the_embedding():
    assert circuit_modules(["embed", "attn2.h1", "mlp0", "attn2.h0"]) == ["mlp0", "attn2"]
    assert circuit_modules(["embed"]) == []
