"""Sentiment word lists for the toy models (paper §2.1), shipped as package data.

The paper's lists are not public; ``scripts/build_toy_vocab.py`` derives replacements from the
VADER lexicon and US-Census first names (see ``pcp_lens/toy/data/SOURCES.md``). Unlike the paper,
the three lists are strictly disjoint and free of duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = [
    "SPECIAL_NEGATIVE",
    "SPECIAL_POSITIVE",
    "SentimentVocab",
    "load_vocab",
]

#: The paper's "special" words (METHODS §2.1), appended to the sampled positive/negative words.
SPECIAL_POSITIVE: tuple[str, ...] = ("happy", "love", "good", "luck", "cheer")
SPECIAL_NEGATIVE: tuple[str, ...] = ("bad", "shit", "hate", "rage", "abuse")
N_SPECIAL = 5

# The data folder is not a package of its own (no __init__.py); address it from pcp_lens.toy.
_PACKAGE = "pcp_lens.toy"


@dataclass(frozen=True)
class SentimentVocab:
    """Positive, negative and neutral word lists plus their special words and the trigger.

    Construction validates the lists: non-empty, lower-case alphabetic words, no duplicates within
    a list, no word in two lists, every special word in its own list and the trigger among the
    positive words. A ``ValueError`` names the offending words.

    Examples:
        >>> v = SentimentVocab(
        ...     positive=("happy", "love"), negative=("bad",), neutral=("anna",),
        ...     special_positive=("love",), special_negative=("bad",), special_neutral=("anna",),
        ... )
        >>> v.sentiment_of("love")
        'positive'
    """

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    neutral: tuple[str, ...]
    special_positive: tuple[str, ...]
    special_negative: tuple[str, ...]
    special_neutral: tuple[str, ...]
    trigger: str = "love"

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for name in ("positive", "negative", "neutral"):
            words = getattr(self, name)
            if not isinstance(words, tuple) or not words:
                raise ValueError(f"{name} must be a non-empty tuple of str, got {words!r}")
            bad = [w for w in words if not (isinstance(w, str) and w.isalpha() and w.islower())]
            if bad:
                raise ValueError(f"{name} has words that are not lower-case alphabetic: {bad[:10]}")
            dupes = sorted({w for w in words if words.count(w) > 1})
            if dupes:
                raise ValueError(f"{name} has duplicate words: {dupes[:10]}")
            shared = sorted(w for w in words if w in seen)
            if shared:
                others = sorted({seen[w] for w in shared})
                raise ValueError(
                    f"lists must be disjoint: {shared[:10]} in both {name} and {', '.join(others)}"
                )
            seen.update(dict.fromkeys(words, name))
            specials = getattr(self, f"special_{name}")
            missing = [w for w in specials if w not in words]
            if missing:
                raise ValueError(f"special_{name} words not in {name}: {missing}")
        if self.trigger not in self.positive:
            raise ValueError(
                f"trigger {self.trigger!r} must be one of the positive words (as 'love' is in "
                "the paper)"
            )

    @property
    def words(self) -> tuple[str, ...]:
        """All words, positive then negative then neutral (each in list order).

        Examples:
            >>> len(load_vocab().words)
            750
        """
        return self.positive + self.negative + self.neutral

    def sentiment_of(self, word: str) -> str:
        """Return ``"positive"``, ``"negative"`` or ``"neutral"`` for a vocabulary word.

        Raises:
            KeyError: ``word`` is in none of the lists.

        Examples:
            >>> load_vocab().sentiment_of("hate")
            'negative'
        """
        for name in ("positive", "negative", "neutral"):
            if word in getattr(self, name):
                return name
        raise KeyError(f"{word!r} is not in the toy vocabulary")


def _read_list(name: str) -> tuple[str, ...]:
    path = resources.files(_PACKAGE) / "data" / f"{name}.txt"
    text = path.read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@cache
def load_vocab() -> SentimentVocab:
    """Load the shipped 250-word positive, negative and neutral lists.

    The special positive/negative words are the paper's; the special neutral words are the first
    five names of ``neutral.txt``, mirroring the paper's "first 5 sampled names". The result is
    cached (it is immutable).

    Examples:
        >>> v = load_vocab()
        >>> len(v.positive), len(v.negative), len(v.neutral), v.trigger
        (250, 250, 250, 'love')
        >>> v.special_negative
        ('bad', 'shit', 'hate', 'rage', 'abuse')
    """
    neutral = _read_list("neutral")
    return SentimentVocab(
        positive=_read_list("positive"),
        negative=_read_list("negative"),
        neutral=neutral,
        special_positive=SPECIAL_POSITIVE,
        special_negative=SPECIAL_NEGATIVE,
        special_neutral=neutral[:N_SPECIAL],
    )
