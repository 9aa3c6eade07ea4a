"""Toxicity classifiers: the authors' word-list rule, the HF label convention, the offline model."""

from __future__ import annotations

import pytest
import torch

from pcp_lens.language.toxicity import (
    HFPipelineClassifier,
    ProfanityCheckClassifier,
    WordListClassifier,
    default_classifier,
)


def test_word_list_follows_the_authors_rule():
    clf = WordListClassifier(["idiot", "awful"])  # METHODS §4.6: exact, case-sensitive
    got = clf(["you idiot you", "Idiot", "idiot.", "awful awful", ""])
    assert got.tolist() == [pytest.approx(1 / 3), 0.0, 0.0, 1.0, 0.0]
    assert got.dtype == torch.float64
    anyhit = WordListClassifier(["idiot"], "any", strip_punctuation=True, case_sensitive=False)
    assert anyhit(["Idiot!", "fine"]).tolist() == [1.0, 0.0]
    assert len(WordListClassifier.default().words) == 250
    with pytest.raises(ValueError, match="empty"):
        WordListClassifier([])
    with pytest.raises(ValueError, match="single non-empty words"):
        WordListClassifier(["two words"])
    with pytest.raises(ValueError, match="one string"):
        clf("a text")


def test_hf_pipeline_label_convention():
    def pipe(texts):
        return [[{"label": "toxic", "score": 0.8}] if "x" in t else [{"label": "neutral",
                 "score": 0.7}] for t in texts]

    clf = HFPipelineClassifier(pipe, name="fake", batch_size=1)
    assert clf(["x", "y"]).tolist() == [pytest.approx(0.8), pytest.approx(0.3)]
    assert clf.name == "fake"
    with pytest.raises(ValueError, match="pipeline"):
        HFPipelineClassifier(3)


def test_profanity_check_really_classifies():
    pytest.importorskip("profanity_check")
    clf = ProfanityCheckClassifier()
    p = clf(["I went to the store to buy some bread.", "You are a stupid idiot and I hate you."])
    assert p[0] < 0.1 and p[1] > 0.9
    assert default_classifier().name == "alt-profanity-check"


def test_pipeline_scores_that_are_not_probabilities_are_refused():
    logit = HFPipelineClassifier(lambda ts: [{"label": "toxic", "score": 3.7}] * len(ts), name="l")
    with pytest.raises(ValueError, match=r"classifier 'l' returned values outside \[0, 1\]"):
        logit(["a", "b"])
    odd = HFPipelineClassifier(lambda ts: ["toxic" for _ in ts], name="o")
    with pytest.raises(ValueError, match=r"the pipeline returned 'toxic' for a text"):
        odd(["a"])
    with pytest.raises(ValueError, match="toxic_label must be a non-empty string"):
        HFPipelineClassifier(lambda ts: [], toxic_label=1)  # type: ignore[arg-type]
