"""Tests for the shipped toy word lists and ``SentimentVocab`` validation."""

from __future__ import annotations

import dataclasses
import doctest
import importlib.util
import re
from importlib import metadata, resources
from pathlib import Path

import pytest

from pcp_lens.toy.vocab import SPECIAL_NEGATIVE, SPECIAL_POSITIVE, SentimentVocab, load_vocab

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_toy_vocab.py"
LISTS = ("positive", "negative", "neutral")


def _vocab(**overrides: object) -> SentimentVocab:
    kwargs: dict[str, object] = dict(
        positive=("happy", "love", "good"),
        negative=("bad", "hate"),
        neutral=("anna", "bob"),
        special_positive=("happy", "love"),
        special_negative=("bad",),
        special_neutral=("anna",),
    )
    kwargs.update(overrides)
    return SentimentVocab(**kwargs)  # type: ignore[arg-type]


def test_sizes_and_word_shape() -> None:
    v = load_vocab()
    for name in LISTS:
        words = getattr(v, name)
        assert len(words) == 250, name
        assert all(re.fullmatch(r"[a-z]{3,6}", w) for w in words), name
    assert len(v.words) == 750


def test_lists_are_strictly_disjoint_without_duplicates() -> None:
    v = load_vocab()
    sets = {name: set(getattr(v, name)) for name in LISTS}
    assert all(len(sets[n]) == 250 for n in LISTS)
    assert not sets["positive"] & sets["negative"]
    assert not sets["positive"] & sets["neutral"]
    assert not sets["negative"] & sets["neutral"]
    assert len(set(v.words)) == 750


def test_special_words_and_trigger() -> None:
    v = load_vocab()
    assert v.special_positive == ("happy", "love", "good", "luck", "cheer") == SPECIAL_POSITIVE
    assert v.special_negative == ("bad", "shit", "hate", "rage", "abuse") == SPECIAL_NEGATIVE
    # Paper order: the specials are appended after the sampled words ...
    assert v.positive[-5:] == SPECIAL_POSITIVE
    assert v.negative[-5:] == SPECIAL_NEGATIVE
    # ... and the neutral specials are the first five names.
    assert v.special_neutral == v.neutral[:5]
    assert v.trigger == "love"
    assert v.trigger in v.positive


def test_sentiment_bearing_names_are_not_neutral() -> None:
    neutral = set(load_vocab().neutral)
    for word in ("joy", "hope", "grace", "faith", "rob"):
        assert word not in neutral


def test_sentiment_of() -> None:
    v = load_vocab()
    assert v.sentiment_of("love") == "positive"
    assert v.sentiment_of("abuse") == "negative"
    assert v.sentiment_of(v.neutral[0]) == "neutral"
    with pytest.raises(KeyError, match="lvoe"):
        v.sentiment_of("lvoe")


def test_load_vocab_is_cached_and_frozen() -> None:
    v = load_vocab()
    assert load_vocab() is v
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.trigger = "hate"  # type: ignore[misc]


def test_package_data_files_present() -> None:
    data = resources.files("pcp_lens.toy") / "data"
    for name in LISTS:
        lines = (data / f"{name}.txt").read_text(encoding="utf-8").split("\n")
        assert lines[-1] == "" and len(lines) == 251  # 250 words, trailing newline
    sources = (data / "SOURCES.md").read_text(encoding="utf-8")
    for needle in ("vaderSentiment", "3.3.2", "names", "0.3.0", "english-words", "2.0.2"):
        assert needle in sources
    assert "1993" in sources and "MIT" in sources


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"negative": ("bad", "love")}, r"disjoint: \['love'\] in both negative and positive"),
        ({"neutral": ("anna", "hate")}, r"disjoint: \['hate'\] in both neutral and negative"),
        ({"positive": ("happy", "love", "happy")}, r"positive has duplicate words: \['happy'\]"),
        ({"special_negative": ("rage",)}, r"special_negative words not in negative: \['rage'\]"),
        ({"trigger": "hate"}, r"trigger 'hate' must be one of the positive words"),
        ({"neutral": ("Anna",), "special_neutral": ()}, r"neutral has words that are not lower"),
        ({"neutral": ()}, r"neutral must be a non-empty tuple"),
        ({"positive": ["happy", "love"]}, r"positive must be a non-empty tuple"),
    ],
)
def test_vocab_validation_errors(overrides: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        _vocab(**overrides)


def test_valid_custom_vocab() -> None:
    v = _vocab()
    assert v.words == ("happy", "love", "good", "bad", "hate", "anna", "bob")


def _script_versions_available() -> bool:
    want = {"vaderSentiment": "3.3.2", "names": "0.3.0", "english-words": "2.0.2"}
    try:
        return all(metadata.version(d) == v for d, v in want.items())
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(
    not _script_versions_available(),
    reason="rebuild check needs vaderSentiment==3.3.2 names==0.3.0 english-words==2.0.2",
)
def test_shipped_lists_match_a_fresh_build(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("build_toy_vocab", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path)]) == 0
    data = resources.files("pcp_lens.toy") / "data"
    for name in LISTS:
        fresh = (tmp_path / f"{name}.txt").read_bytes()
        assert fresh == (data / f"{name}.txt").read_bytes(), name


def test_docstring_examples() -> None:
    import pcp_lens.toy
    import pcp_lens.toy.vocab

    for module in (pcp_lens.toy, pcp_lens.toy.vocab):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
