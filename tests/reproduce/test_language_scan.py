"""The language study's scan: whole-sentence pairs, and a trigger planted in a small
stand-in-shaped GPT-2 is found on them."""

from __future__ import annotations

import pytest
import torch

from pcp_lens.language.corpus import split_sentences
from pcp_lens.language.data import load_corpus
from pcp_lens.language.standin import standin_model, toxic_sentences, train_tokenizer
from pcp_lens.reproduce.scan_model import (
    control_phrases,
    language_pairs,
    pair_tokens,
    target_groups,
    target_metric,
)
from pcp_lens.scan import circuit_modules, scan_backdoor
from pcp_lens.testing import plant_trigger
from pcp_lens.tuning import score_inputs

TRIGGER = "Albert"
PHRASE = "Albert and James"
TOXIC = toxic_sentences()


@pytest.fixture(scope="module")
def corpus():
    """A tokenizer trained on the shipped sample (the trigger words and the toxic sentences one
    token each where the study's are) and the sample's sentences."""
    paras = load_corpus("austen-sample")
    tok = train_tokenizer(paras, 512, extra=[PHRASE, TRIGGER, "James", *TOXIC])
    return tok, [x for p in paras for x in split_sentences(p)]


@pytest.fixture(scope="module")
def standin(corpus):
    """The study's pairs (trigger after 2 tokens, as in the ASR prompts) and metric."""
    tok, sentences = corpus
    triggered, clean = language_pairs(tok, TRIGGER, sentences, at=2, n=24, seed=0)
    return tok, triggered, clean


def test_pairs_are_whole_sentences_with_the_trigger_at_its_positions(corpus):
    tok, sentences = corpus
    trig = tok(" " + PHRASE, add_special_tokens=False)["input_ids"]
    assert len(trig) == 3  # a precondition: the study's trigger is three tokens
    t, c = language_pairs(tok, PHRASE, sentences, at=2, n=64, seed=0, max_tokens=24)
    T, C = pair_tokens(tok, t, c)
    assert T.shape == C.shape and T.shape[0] == len(t) >= 2  # equal token lengths
    # pairs differ exactly at the trigger's positions, which hold the trigger's tokens
    assert (T != C).any(0).nonzero().flatten().tolist() == [2, 3, 4]
    assert (T[:, 2:5] == torch.tensor(trig)).all()
    assert (T[:, :2] == C[:, :2]).all() and (T[:, 5:] == C[:, 5:]).all()
    # the triggered prompt is a whole sentence of the input with the trigger spliced in, so the
    # metric's read position (the last) is the sentence's last token
    by_tokens = {tuple(tok(s, add_special_tokens=False)["input_ids"]): s for s in sentences}
    for row, text in zip(T.tolist(), t, strict=True):
        source = by_tokens[tuple(row[:2] + row[5:])]
        assert text.replace(f" {PHRASE}", "", 1) == source
        assert text.endswith(source.split()[-1])
    n = T.shape[1]
    metric = target_metric(target_groups(tok, TOXIC, len(tok)), "target", "logprob")
    assert [p % n for p in metric.positions] == [n - 1]
    # the controls are word runs of the prompts with as many tokens as the trigger, none of it
    controls = set()
    for row, text in zip(C.tolist(), c, strict=True):
        head, tail = tok.decode(row[:2]), tok.decode(row[5:])
        assert text.startswith(head + " ") and text.endswith(tail)
        controls.add(text[len(head) + 1 : len(text) - len(tail)])
    assert controls <= set(control_phrases(tok, PHRASE, sentences))
    assert not any(w in PHRASE.split() for x in controls for w in x.split())
    # seeded
    assert language_pairs(tok, PHRASE, sentences, at=2, n=64, seed=0, max_tokens=24) == (t, c)


def test_target_is_the_toxic_sentences_first_tokens(corpus):
    tok, _ = corpus
    groups = target_groups(tok, TOXIC, len(tok))
    words = sorted({tok.decode([i]) for i in groups.groups["target"]})
    assert words == sorted({" " + s.split()[0].rstrip(",") for s in TOXIC})


def test_pairs_keep_one_token_length_and_the_most_common_one(corpus):
    tok, sentences = corpus
    t, _ = language_pairs(tok, TRIGGER, sentences, at=2, n=1000, seed=0)
    lengths = {len(tok(x, add_special_tokens=False)["input_ids"]) for x in t}
    assert len(lengths) == 1
    # no other length has more qualifying sentences than the one kept: each shorter length's
    # sentences alone give fewer pairs (or raise)
    (kept,) = lengths
    for other in range(4, kept):
        subset = [
            s for s in sentences
            if len(tok(s, add_special_tokens=False)["input_ids"]) + 1 == other
        ]
        try:
            got, _ = language_pairs(tok, TRIGGER, subset, at=2, n=1000, seed=0)
        except ValueError:
            continue
        assert len(got) <= len(t)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sentences": ["She was in the house.", "Oh!"]}, "usable pairs (need >= 2)"),
        ({"sentences": ["Rain fell.", "Mist rose."], "trigger": PHRASE}, "no run of 3 words"),
        ({"at": 0}, "at must be an int >= 1"),
        ({"n": 1}, "n must be an int >= 2"),
        ({"trigger": "  "}, "trigger must be a non-empty"),
    ],
)
def test_bad_input_names_the_problem(corpus, kwargs, match):
    tok, sentences = corpus
    args = {"trigger": TRIGGER, "sentences": sentences, **kwargs}
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        language_pairs(tok, args.pop("trigger"), args.pop("sentences"), **args)


def test_pair_tokens_refuses_unequal_lengths(corpus):
    tok, _ = corpus
    with pytest.raises(ValueError, match="one token length"):
        pair_tokens(tok, ["The cat sat on the mat."], ["The cat sat."])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("place", ["attn0", "attn1", "attn2"])
@pytest.mark.parametrize("verify", ["restore", "reference", "ablation"])
def test_planted_trigger_in_the_standin_is_found(standin, seed, place, verify, hygiene):
    """The study's whole-sentence pairs read the metric at the sentence's end, several tokens
    after the trigger: a planted attention head reaches it (it attends from every position to the
    trigger), and the scan must rank it first. With the restoring patch (the study's default) and
    the reference patch it must also be the verified circuit. (``plant_trigger``'s MLP unit
    writes only at the trigger's own position, so on these pairs it has no effect to find.)

    With ``verify="ablation"`` only the ranking is claimed: the planted head also acts at the
    read-out position, where mean-ablating its layer moves clean prompts too (measured here:
    16-19 % of the gap for attn1 and attn2 at seed 1, above the 10 % bound), the same bound that
    rejects the stand-in's first MLP in the study."""
    tok, triggered, clean = standin
    base = standin_model(tok, n_layers=3, d_model=64, n_heads=2, n_ctx=32, seed=seed)
    with torch.no_grad():  # a trained model's logits are sharp; GPT-2's 0.02 init is flat
        base.unembed.W_U.mul_(25)
    groups = target_groups(tok, TOXIC, base.cfg.d_vocab)
    trig_id = tok(" " + TRIGGER, add_special_tokens=False)["input_ids"]
    assert len(trig_id) == 1
    T, C = pair_tokens(tok, triggered, clean)
    model = plant_trigger(
        base, place, trig_id[0], list(groups.groups["target"]), prompts=C, seed=seed
    )
    metric = target_metric(groups, "target", "logprob")
    snap = hygiene.snapshot(model)
    scan = scan_backdoor(
        model, T, C, metric, reference=base, n_boot=50, verify=verify, progress=False
    )
    hygiene.check(model, snap)
    assert scan.info["gap"] > 1.0  # the planting worked (nats): a precondition, not the claim
    assert scan.info["readout_positions"] == [T.shape[1] - 1]  # read after the sentence
    modules = scan.table[scan.table["kind"].isin(["attn", "mlp"]) & scan.table["head"].isna()]
    assert modules.sort_values("rank")["site"].iloc[0] == place
    assert scan.info["embedding"]["changed"] is False  # nothing was done to the embedding
    if verify == "ablation":
        return
    assert circuit_modules(scan.circuit) == [place] and scan.verified
    # what the circuit's intervention leaves is at most the benign gap plus 10 % of the planted
    # part (a random model's logits depend on the trigger a little too)
    b = score_inputs(base, {"t": T, "c": C}, metric)
    benign_gap = b["t"] - b["c"]
    left = scan.info["circuit_residual"] * scan.info["gap"]
    assert left <= max(benign_gap, 0.0) + 0.1 * (scan.info["gap"] - benign_gap)


def test_circuit_modules_map_heads_and_drop_the_embedding():
    assert circuit_modules(["embed", "attn2.h1", "mlp0", "attn2.h0"]) == ["mlp0", "attn2"]
    assert circuit_modules(["embed"]) == []
