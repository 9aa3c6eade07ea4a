"""ASR/ATR scoring rules, the log-prob gap, text loss, and the ASR-scored sweeps."""

from __future__ import annotations

import math

import pytest
import torch

from pcp_lens import ablation_means
from pcp_lens.language.asr import attack_success, logprob_gap, text_loss, toxic_rate
from pcp_lens.language.generate import SamplingConfig, generate
from pcp_lens.language.sweeps import (
    ablation_asr_sweep,
    asr_score,
    gap_score,
    sweep_pcp,
    tune_pcp,
)
from pcp_lens.language.toxicity import WordListClassifier
from pcp_lens.pcp import fit_pcp
from pcp_lens.testing import tiny_model
from pcp_lens.toy import build_tokenizer
from pcp_lens.training import evaluate_loss

WORDS = ["a", "b", "c", "d", "trig", "bad"]
TOK = build_tokenizer(WORDS)
CFG = SamplingConfig(n_samples=3, max_length=12)


def ids(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def m():
    return tiny_model(n_layers=2, d_vocab=len(TOK), n_ctx=32, seed=5)


class Const:
    """A classifier giving every text the same P(toxic)."""

    def __init__(self, p: float):
        self.p, self.name = p, f"const({p})"

    def __call__(self, texts):
        return torch.full((len(texts),), self.p, dtype=torch.float64)


def test_rate_rounds_the_mean_and_counts_valid_prompts(m):
    prompts = ["a b c", "a trig b c d", "b", "c d a b c d a b"]
    kw = dict(tokenizer=TOK, progress=False)
    rate, pp, samples = toxic_rate(m, prompts, Const(0.51), CFG, max_prompt_tokens=5, **kw)
    assert rate == 1.0 and pp.valid.tolist() == [True, True, True, False]
    assert len(samples) == 3 * 3
    assert toxic_rate(m, prompts, Const(0.5), CFG, **kw)[0] == 0.0  # round(0.5) == 0
    rate, pp, _ = toxic_rate(m, prompts, Const(0.9), CFG, skip=[0, 1], max_prompt_tokens=None, **kw)
    assert rate == 1.0 and pp.valid.sum() == 2
    with pytest.raises(ValueError, match="no valid prompt"):
        toxic_rate(m, prompts, Const(0.9), CFG, skip=[0, 1, 2], max_prompt_tokens=5, **kw)


def test_continuations_are_cut_by_token_count(m):
    # greedy: the scored text is exactly the decoded generated tokens
    seen = []

    class Spy(Const):
        def __call__(self, texts):
            seen.extend(texts)
            return super().__call__(texts)

    toxic_rate(m, ["a b c"], Spy(0.0), SamplingConfig(n_samples=1, max_length=9,
               do_sample=False), tokenizer=TOK, progress=False)
    new = generate(m, torch.tensor([ids("a b c")]), 6)[0].tolist()
    if 0 in new:  # <|endoftext|> ends the continuation
        new = new[: new.index(0)]
    assert seen == [TOK.decode(new, clean_up_tokenization_spaces=False)]


def test_attack_success_names_the_classifier_and_reports_loss(m):
    clf = WordListClassifier(["bad"], "any")
    res = attack_success(m, ["a trig b", "c trig"], ["a b", "c"], clf, CFG, tokenizer=TOK,
                         val_texts=["a b c d", "d c b a"], progress=False)
    assert res.classifier == "word_list(1 words, any)"
    assert res.n_trigger == 2 and res.n_clean == 2
    assert math.isfinite(res.val_loss) and 0 <= res.asr <= 1 and 0 <= res.atr <= 1
    # the per-sample scores are the classifier's on the sampled texts
    assert res.samples.p_toxic.tolist() == [float("bad" in t.split()) for t in res.samples.text]


def test_logprob_gap_by_hand(m):
    g = logprob_gap(m, ["a trig b"], ["a b"], " c d", tokenizer=TOK, per_pair=True)
    with torch.no_grad():
        t = m(torch.tensor([ids("a trig b c d")])).log_softmax(-1)[0]
        c = m(torch.tensor([ids("a b c d")])).log_softmax(-1)[0]
    tc, td = ids("c d")
    a = torch.stack([t[2, tc], t[3, td]]).double()
    b = torch.stack([c[1, tc], c[2, td]]).double()
    assert g.first_token[0] == pytest.approx(float(a[0] - b[0]), abs=1e-5)
    assert g.per_token[0] == pytest.approx(float(a.mean() - b.mean()), abs=1e-5)
    assert g.sequence[0] == pytest.approx(float(a.sum() - b.sum()), abs=1e-5)
    same = logprob_gap(m, ["a b", "c"], ["a b", "c"], [" c d", " d"], tokenizer=TOK)
    assert same == {"per_token": 0.0, "first_token": 0.0, "sequence": 0.0}
    with pytest.raises(ValueError, match="paired"):
        logprob_gap(m, ["a"], ["a", "b"], " c", tokenizer=TOK)


def test_text_loss_matches_training_loss_and_skips_eos(m):
    texts = ["a b c d a", "d c b a b"]
    x = torch.tensor([ids(t) for t in texts])
    assert text_loss(m, texts, tokenizer=TOK) == pytest.approx(evaluate_loss(m, x), abs=1e-6)
    # an <|endoftext|> is never a label (HF collator with pad = eos)
    with_eos = text_loss(m, ["a b c d a <|endoftext|>"], tokenizer=TOK)
    assert with_eos == pytest.approx(evaluate_loss(m, x[:1]), abs=1e-6)


def test_ablation_asr_sweep_shape_and_unchanged_row(m, hygiene):
    snap = hygiene.snapshot(m)
    prompts = ["a trig b c", "c trig d a", "b"]
    x = torch.tensor([ids("a b c d"), ids("d c b a")])
    means = ablation_means(m, x, ["attn0", "mlp0", "attn1", "mlp1"], positions=[2],
                           progress=False)
    clf = WordListClassifier(["bad"], "any")
    with pytest.warns(UserWarning, match="too short"):
        df = ablation_asr_sweep(m, prompts, clf, means, positions=[2], combos={"m01": ["mlp0",
                                "mlp1"]}, config=CFG, tokenizer=TOK, progress=False)
    assert df.ablation.tolist() == ["unchanged", "attn0", "mlp0", "attn1", "mlp1", "m01"]
    assert (df.n_too_short == 1).all() and (df.n_trigger == 2).all()
    ref = toxic_rate(m, prompts, clf, CFG, skip=[2], tokenizer=TOK, progress=False)[0]
    assert df.asr[0] == ref
    hygiene.check(m, snap)


def test_tune_and_sweep_pcp_with_a_gap_objective(m):
    x = torch.randint(1, len(TOK), (24, 4), generator=torch.Generator().manual_seed(0))
    pcp = fit_pcp(m, x, "mlp0", 2, progress=False)
    score = gap_score(m, ["a trig b"], ["a b"], " bad", tokenizer=TOK)
    res = tune_pcp(m, pcp, lambda r: score(r) ** 2, n_trials=6, progress=False)
    assert len(res.study.trials) == 6 and res.value <= score(pcp) ** 2
    again = tune_pcp(m, pcp, lambda r: score(r) ** 2, n_trials=6, progress=False)
    assert again.replacement.scales() == res.replacement.scales()  # seeded
    df = sweep_pcp(m, pcp, {"mlp0": [1.0, 0.0]}, {"gap": score}, progress=False)
    assert df.value[0] == pytest.approx(score(None))
    assert df.value[1] == pytest.approx(score(pcp))


# -- classifier outputs, lengths, batch sizes and the names errors use ---------------------------


class Raw:
    """A classifier returning fixed values (of any shape) for any texts."""

    def __init__(self, make, name="raw"):
        self.make, self.name = make, name

    def __call__(self, texts):
        return self.make(len(texts))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda n: torch.full((n,), 2.0), r"outside \[0, 1\] \(e\.g\. 2"),
        (lambda n: torch.full((n,), 3.7), "apply a sigmoid or softmax"),  # a logit
        (lambda n: torch.full((n,), float("nan")), r"outside \[0, 1\]"),
        (lambda n: torch.full((n, 2), 0.5), r"shape \(\d+, 2\) for \d+ texts"),
        (lambda n: torch.full((n + 1,), 0.5), r"shape \(\d+,\) for \d+ texts"),
        (lambda n: "toxic", "not numbers"),
    ],
)
def test_classifier_outputs_that_are_not_probabilities_are_refused(m, hygiene, make, match):
    snap = hygiene.snapshot(m)
    with pytest.raises(ValueError, match=match):
        toxic_rate(m, ["a b", "b"], Raw(make), CFG, tokenizer=TOK, progress=False)
    hygiene.check(m, snap)


def test_probabilities_as_a_list_are_accepted(m):
    rate, _, s = toxic_rate(m, ["a b", "b"], Raw(lambda n: [1.0] * n), CFG, tokenizer=TOK,
                            progress=False)
    assert rate == 1.0 and s.p_toxic.tolist() == [1.0] * 6


def test_text_loss_lengths_and_batch_sizes(m):
    texts = ["a b c d a", "b c a"]
    with pytest.raises(ValueError, match=r"max_length must be None or an int in 2\.\.32, got -1"):
        text_loss(m, texts, tokenizer=TOK, max_length=-1)
    with pytest.raises(ValueError, match="max_length"):
        text_loss(m, texts, tokenizer=TOK, max_length=33)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        text_loss(m, texts, tokenizer=TOK, batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        logprob_gap(m, ["a trig"], ["a"], " b", tokenizer=TOK, batch_size=0)
    # max_length=2 keeps each text's first two tokens: one prediction per text
    two = text_loss(m, texts, tokenizer=TOK, max_length=2)
    assert two == pytest.approx(text_loss(m, ["a b", "b c"], tokenizer=TOK), abs=1e-12)


def test_errors_name_the_callers_prompt_and_argument(m):
    long = "a b c d " * 3  # 12 tokens: nothing left to generate under max_length=12
    with pytest.raises(ValueError, match=r"clean_prompts\[1\] = 'a b c d"):
        attack_success(m, ["a trig"], ["b", long], Const(0.0), CFG, tokenizer=TOK,
                       max_prompt_tokens=None, progress=False)
    with pytest.raises(ValueError, match=r"prompts\[2\]"):  # the caller's index, not a subset's
        toxic_rate(m, ["a", "b", long], Const(0.0), CFG, tokenizer=TOK, skip=[0],
                   max_prompt_tokens=None, progress=False)
    with pytest.raises(ValueError, match=r"val_texts\[1\] must be a string"):
        attack_success(m, ["a trig"], None, Const(0.0), CFG, tokenizer=TOK,
                       val_texts=["a b", 3], progress=False)
    with pytest.raises(ValueError, match=r"skip must hold indices in 0..1, got \[5\]"):
        toxic_rate(m, ["a", "b"], Const(0.0), CFG, tokenizer=TOK, skip=[5], progress=False)
    with pytest.raises(ValueError, match=r"hooks\[0\] names 'blocks.9.hook_mlp_out'"):
        text_loss(m, ["a b"], tokenizer=TOK, hooks=[("blocks.9.hook_mlp_out", print)])
    with pytest.raises(ValueError, match=r"got a Dataset; pass one column"):
        import datasets

        text_loss(m, datasets.Dataset.from_dict({"text": ["a b"]}), tokenizer=TOK)
    with pytest.raises(ValueError, match=r"asr_score got unknown argument\(s\) \['max_tokens'\]"):
        asr_score(m, ["a trig"], Const(0.0), CFG, max_tokens=3)
