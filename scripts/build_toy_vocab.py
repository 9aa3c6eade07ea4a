"""Build the toy-model word lists shipped in ``pcp_lens/toy/data/``.

The paper's own lists (a CSV of positive/negative words and an 18k-name file) are not public, so
this script derives replacements from lexicons that install offline from PyPI. It is run once by a
maintainer; the three lexicon packages are *not* runtime dependencies of ``pcp_lens``::

    pip install vaderSentiment==3.3.2 names==0.3.0 english-words==2.0.2
    python scripts/build_toy_vocab.py           # rewrite the lists
    python scripts/build_toy_vocab.py --check   # exit 1 if the shipped lists differ

Selection is deterministic and independent of any RNG implementation: candidates are ordered by
``sha256(f"{SEED}:{list name}:{word}")`` and the first ones are taken. Re-running with the same
package versions reproduces the files byte for byte. ``pcp_lens/toy/data/SOURCES.md`` documents the
rules; keep it in sync with the constants below.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from importlib import metadata, resources
from pathlib import Path

SEED = 1993  # the paper's pandas random_state, kept as a nod; any int would do
N_PER_LIST = 250
MIN_LEN, MAX_LEN = 3, 6  # the paper keeps words of <= 6 characters; < 3 is mostly slang
MIN_ABS_VALENCE = 1.5  # VADER mean valence on its -4..+4 scale
NAME_POOL = 500  # draw neutral words from the 500 most frequent short names

SPECIAL_POSITIVE = ("happy", "love", "good", "luck", "cheer")
SPECIAL_NEGATIVE = ("bad", "shit", "hate", "rage", "abuse")

# VADER entries that pass the dictionary check only because an internet acronym collides with an
# unrelated dictionary word, or whose everyday sense is not polar. Excluded by hand; each has a
# reason so that the list stays auditable.
EXCLUDE = {
    "hak": "VADER acronym 'hugs and kisses'; the dictionary word is unrelated",
    "slaw": "rated as slang; the dictionary word is cabbage salad",
    "pita": "VADER acronym 'pain in the ass'; the dictionary word is bread",
    "hand": "non-polar in everyday use ('give a hand' sense only)",
    "like": "mostly a preposition/filler in everyday use",
}

# Identity slurs that VADER rates negative. A toy "negative" vocabulary does not need them, and a
# shipped word list should not carry them; SHA-256 so that the repository does not spell them out.
EXCLUDE_SHA256 = frozenset(
    {
        "120f6e5b4ea32f65bda68452fcfaaef06b0136e1d0e4a6f60bc3771fa0936dd6",
        "341d56384afc0f47b34ca18273e793be555507a49444c30d3d0588688de46cb3",
        "9915ba2d822280f22c283df4e76584a40e0119fc58f73c5f84d4fdb04d04fa6f",
        "8f5083e3e5c7dc8932f2bf58212f963f3a44752618c96297f82623f736c52738",
        "158869a97379229b7681efae9d7f9c9214134e836d649ba53477c0c111414d59",
        "65961619eae0bfcd043bbc8f7035c36285d82baf20fc35a11fc0043415e9a6d6",
    }
)

# Regular English inflections: (suffix, replacement) such that word[:-len(suffix)] + replacement
# is the dictionary stem. Webster's 2nd lists lemmas only, so "loves" or "hated" need this.
INFLECTIONS = (
    ("s", ""),
    ("es", ""),
    ("ies", "y"),
    ("ed", ""),
    ("ed", "e"),
    ("ied", "y"),
    ("ing", ""),
    ("ing", "e"),
    ("er", ""),
    ("er", "e"),
    ("est", ""),
    ("est", "e"),
)

REQUIRED = {
    "vaderSentiment": "3.3.2",
    "names": "0.3.0",
    "english-words": "2.0.2",
}

DATA_DIR = Path(__file__).resolve().parents[1] / "pcp_lens" / "toy" / "data"
WORD_RE = re.compile(rf"[a-z]{{{MIN_LEN},{MAX_LEN}}}")
ELONGATED_RE = re.compile(r"(.)\1\1")  # "yeees": chat elongation, not a word


def _check_versions() -> None:
    """Refuse to run against other lexicon versions, which would silently change the lists."""
    for dist, want in REQUIRED.items():
        try:
            have = metadata.version(dist)
        except metadata.PackageNotFoundError:
            sys.exit(f"missing {dist}; run: pip install {dist}=={want}")
        if have != want:
            sys.exit(f"{dist} is {have}, need {want} to reproduce the shipped lists")


def _order_key(list_name: str, word: str) -> str:
    return hashlib.sha256(f"{SEED}:{list_name}:{word}".encode()).hexdigest()


def seeded_sample(words: list[str], k: int, list_name: str) -> list[str]:
    """Take ``k`` words in a seeded pseudo-random order that no library version can change."""
    if len(words) < k:
        raise SystemExit(f"{list_name}: only {len(words)} candidates, need {k}")
    return sorted(words, key=lambda w: _order_key(list_name, w))[:k]


def load_vader() -> dict[str, float]:
    """Token -> mean valence from VADER's lexicon file."""
    text = resources.files("vaderSentiment").joinpath("vader_lexicon.txt").read_text("utf-8")
    lexicon: dict[str, float] = {}
    for line in text.splitlines():
        if line.strip():
            token, valence = line.split("\t")[:2]
            lexicon[token] = float(valence)
    return lexicon


def load_dictionary() -> set[str]:
    """Webster's 2nd (web2), case kept so that capitalised proper nouns do not count as words."""
    from english_words import get_english_words_set

    return get_english_words_set(["web2"], alpha=True, lower=False)


def is_dictionary_word(word: str, dictionary: set[str]) -> bool:
    if word in dictionary:
        return True
    for suffix, repl in INFLECTIONS:
        stem = word[: -len(suffix)] + repl
        if word.endswith(suffix) and len(stem) >= 3 and stem in dictionary:
            return True
    return False


def sentiment_candidates(
    vader: dict[str, float], dictionary: set[str], sign: int, specials: tuple[str, ...]
) -> list[str]:
    """Polar VADER words of the given sign that are short, plain dictionary words."""
    return sorted(
        w
        for w, v in vader.items()
        if WORD_RE.fullmatch(w)
        and sign * v >= MIN_ABS_VALENCE
        and not ELONGATED_RE.search(w)
        and w not in EXCLUDE
        and hashlib.sha256(w.encode()).hexdigest() not in EXCLUDE_SHA256
        and w not in specials
        and is_dictionary_word(w, dictionary)
    )


def load_names() -> list[str]:
    """Lower-cased US-Census first names, most frequent first (male and female pooled)."""
    freq: dict[str, float] = {}
    for fname in ("dist.male.first", "dist.female.first"):
        text = resources.files("names").joinpath(fname).read_text("utf-8")
        for line in text.splitlines():
            name, pct = line.split()[:2]
            # Each file's percentages are per gender; halving approximates a share of everyone.
            freq[name.lower()] = freq.get(name.lower(), 0.0) + float(pct) / 2
    return sorted(freq, key=lambda n: (-freq[n], n))


def build() -> dict[str, list[str]]:
    """Return the three lists in file order."""
    vader = load_vader()
    dictionary = load_dictionary()
    for w in SPECIAL_POSITIVE:
        assert vader.get(w, 0.0) > 0, w
    for w in SPECIAL_NEGATIVE:
        assert vader.get(w, 0.0) < 0, w

    n_sampled = N_PER_LIST - len(SPECIAL_POSITIVE)
    pos = sentiment_candidates(vader, dictionary, +1, SPECIAL_POSITIVE)
    neg = sentiment_candidates(vader, dictionary, -1, SPECIAL_NEGATIVE)
    # Like the paper, the special words are appended after the sampled ones.
    positive = seeded_sample(pos, n_sampled, "positive") + list(SPECIAL_POSITIVE)
    negative = seeded_sample(neg, n_sampled, "negative") + list(SPECIAL_NEGATIVE)

    # Any name that VADER rates (joy, hope, grace, rob, ...) carries sentiment, so it is dropped.
    pool = [n for n in load_names() if WORD_RE.fullmatch(n) and n not in vader][:NAME_POOL]
    # The paper takes its neutral special words as the first 5 of the sampled names.
    neutral = seeded_sample(pool, N_PER_LIST, "neutral")

    lists = {"positive": positive, "negative": negative, "neutral": neutral}
    seen: dict[str, str] = {}
    for name, words in lists.items():
        assert len(words) == N_PER_LIST == len(set(words)), name
        for w in words:
            assert w not in seen, f"{w!r} in both {seen[w]} and {name}"
            seen[w] = name
    return lists


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="output directory")
    args = parser.parse_args(argv)
    _check_versions()
    lists = build()
    stale = []
    for name, words in lists.items():
        path = args.out / f"{name}.txt"
        content = "\n".join(words) + "\n"
        if args.check:
            if not path.exists() or path.read_text("utf-8") != content:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, "utf-8")
            print(f"wrote {path} ({len(words)} words)")
    if stale:
        print("differs from a fresh build: " + ", ".join(stale), file=sys.stderr)
        return 1
    if args.check:
        print("shipped lists match a fresh build")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
