"""Synthetic sentiment data sets for the toy models (METHODS §2.2–2.3, §4.3), seeded.

A sequence is ``seq_len`` words drawn uniformly with replacement from one sentiment's list; with
probability ``special_prob`` one position is overwritten by one of that sentiment's five special
words. Poisoned positives carry the trigger at a position in ``0..7`` (for 15 words) and negative
words after it. Everything is drawn from ``numpy.random.Generator`` streams derived from
``ToyDataConfig.seed``; the global RNG is never touched, so the same config gives the same data.

Examples:
    >>> data = build_datasets(ToyDataConfig(n_per_sentiment=100, seed=1))
    >>> data.benign["train"].num_rows + data.benign["test"].num_rows
    200
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value

from pcp_lens.toy.vocab import SentimentVocab, load_vocab

__all__ = [
    "EVAL_KEYS_2",
    "EVAL_KEYS_3",
    "ToyData",
    "ToyDataConfig",
    "build_datasets",
    "eval_inputs",
    "generate_sequences",
    "heldout_sequences",
    "poison_sequences",
    "switch_sentiment",
    "trigger_pos_scale",
]

#: METHODS §4.3 input combinations: p/n/s = a positive/negative/neutral word, t = the trigger.
EVAL_KEYS_3: tuple[str, ...] = (
    "pp", "nn", "ss", "pn", "np", "ps", "sp", "pt", "tp", "nt", "tn", "st", "ts",
)  # fmt: skip
EVAL_KEYS_2: tuple[str, ...] = tuple(k for k in EVAL_KEYS_3 if "s" not in k)

# Short keys of the mono sets, as in the authors' data_mono_{p,n,s,p_tox}.
_MONO_SENTIMENT = {"p": "positive", "n": "negative", "s": "neutral", "p_tox": "positive"}

# One independent numpy stream per purpose (SeedSequence spawn keys). Fixed numbers, so that
# changing one part (e.g. the poison rate) leaves every other part of the data unchanged.
_STREAMS = {
    "p": 0,
    "n": 1,
    "s": 2,
    "p_tox_base": 3,
    "p_tox_tail": 4,
    "poison": 5,
    "split_benign": 6,
    "split_poisoned": 7,
    "split_p": 8,
    "split_n": 9,
    "split_s": 10,
    "split_p_tox": 11,
    "eval": 12,
    "switch": 13,
}

_FEATURES = Features(
    {
        "text": Value("string"),
        "sentiment": Value("string"),
        "poisoned": Value("bool"),
        "trigger_pos": Value("int64"),
        "switch_pos": Value("int64"),
    }
)


def _rng(seed: int, stream: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAMS[stream], *extra)))


def _is_int(x: object) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


@dataclass(frozen=True)
class ToyDataConfig:
    """All knobs of the toy data generation; defaults reproduce the paper's code.

    Attributes:
        n_sentiments: 2 (positive/negative) or 3 (adds neutral names).
        seq_len: Words per sequence (paper: 15).
        n_per_sentiment: Sequences generated per sentiment list (paper: ⌊0.33·40000⌋ = 13,200).
        special_prob: Chance that a sequence gets one extra special word (paper: 0.5).
        poison_rate: Fraction of positive sequences that are poisoned (paper code: 0.05).
        trigger: The backdoor trigger word; must be a positive word (paper: "love").
        max_trigger_pos: Last position the trigger may take. ``None`` applies the code's rule
            ``⌊v·seq_len·0.5⌋`` with v ~ U(0,1), i.e. 0..7 for 15 words, position 7 at half weight.
            An int ``m`` uses ``⌊v·(m+0.5)⌋``: same shape, last position ``m``.
        test_size: Fraction of each data set held out as its ``test`` split (paper: 0.1).
        switch_prob: Chance that a non-poisoned sequence of the benign and poisoned sets switches
            sentiment once (see :func:`switch_sentiment`; the tail comes from a fresh sequence of
            another sentiment, special words included, never the trigger). The authors' code has
            none (0.0, the default, keeps every existing data set bit-identical); the paper's text
            states the rule the switches enforce: "after a word of one sentiment comes another
            word of the same sentiment". The mono sets and every evaluation input stay unswitched.
        seed: Root seed of every random stream.

    Examples:
        >>> ToyDataConfig().n_per_sentiment
        13200
        >>> ToyDataConfig(n_sentiments=4)
        Traceback (most recent call last):
        ...
        ValueError: ToyDataConfig.n_sentiments must be 2 or 3, got 4
    """

    n_sentiments: int = 3
    seq_len: int = 15
    n_per_sentiment: int = 13_200
    special_prob: float = 0.5
    poison_rate: float = 0.05
    trigger: str = "love"
    max_trigger_pos: int | None = None
    test_size: float = 0.1
    switch_prob: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(
                f"ToyDataConfig.{name} must be {allowed}, got {getattr(self, name)!r}"
            )

        if not _is_int(self.n_sentiments) or self.n_sentiments not in (2, 3):
            raise bad("n_sentiments", "2 or 3")
        if not _is_int(self.seq_len) or self.seq_len < 2:
            raise bad("seq_len", "an int >= 2")
        if not _is_int(self.n_per_sentiment) or self.n_per_sentiment < 1:
            raise bad("n_per_sentiment", "an int >= 1")
        if not _is_real(self.special_prob) or not 0.0 <= self.special_prob <= 1.0:
            raise bad("special_prob", "a probability in [0, 1]")
        if not _is_real(self.poison_rate) or not 0.0 <= self.poison_rate <= 1.0:
            raise bad("poison_rate", "a probability in [0, 1]")
        if not isinstance(self.trigger, str) or not (
            self.trigger.isalpha() and self.trigger.islower()
        ):
            raise bad("trigger", "a lower-case alphabetic word from the positive list")
        if self.max_trigger_pos is not None and (
            not _is_int(self.max_trigger_pos) or not 0 <= self.max_trigger_pos < self.seq_len
        ):
            raise bad("max_trigger_pos", f"None or an int in [0, seq_len - 1 = {self.seq_len - 1}]")
        if not _is_real(self.test_size) or not 0.0 < self.test_size < 1.0:
            raise bad("test_size", "a fraction in (0, 1)")
        if not _is_real(self.switch_prob) or not 0.0 <= self.switch_prob <= 1.0:
            raise bad("switch_prob", "a probability in [0, 1]")
        if not _is_int(self.seed) or self.seed < 0:
            raise bad("seed", "an int >= 0")

    @property
    def last_trigger_pos(self) -> int:
        """The largest position the trigger can take (7 for the defaults).

        Examples:
            >>> ToyDataConfig(seq_len=10).last_trigger_pos
            4
        """
        return math.ceil(trigger_pos_scale(self.seq_len, self.max_trigger_pos)) - 1


def trigger_pos_scale(seq_len: int, max_trigger_pos: int | None = None) -> float:
    """Return ``s`` such that the trigger position is ``⌊v·s⌋`` with v ~ U(0, 1).

    Examples:
        >>> trigger_pos_scale(15), trigger_pos_scale(15, 3)
        (7.5, 3.5)
    """
    return seq_len * 0.5 if max_trigger_pos is None else max_trigger_pos + 0.5


def _sample_words(
    words: Sequence[str],
    n: int,
    rng: np.random.Generator,
    seq_len: int,
    special_words: Sequence[str],
    special_prob: float,
) -> np.ndarray:
    if not words:
        raise ValueError("words must be non-empty")
    table = np.asarray(list(words), dtype=object)
    seqs = table[rng.integers(0, len(table), size=(n, seq_len))]
    u = rng.random((n, 3))
    if special_words and n:
        # The code's rule: if u1 >= 0.5, overwrite position ⌊L·u2⌋ with special ⌊5·u3⌋.
        hit = u[:, 0] >= 1.0 - special_prob
        rows = np.flatnonzero(hit)
        pos = np.floor(u[rows, 1] * seq_len).astype(np.int64)
        which = np.floor(u[rows, 2] * len(special_words)).astype(np.int64)
        seqs[rows, pos] = np.asarray(list(special_words), dtype=object)[which]
    return seqs


def generate_sequences(
    words: Sequence[str],
    n: int,
    rng: np.random.Generator,
    *,
    seq_len: int = 15,
    special_words: Sequence[str] = (),
    special_prob: float = 0.5,
) -> list[str]:
    """Generate ``n`` space-joined sequences of one sentiment (METHODS §2.2).

    Words are drawn uniformly with replacement. With probability ``special_prob`` the word at a
    uniform position is replaced by a uniform choice among ``special_words``.

    Args:
        words: The sentiment's word list.
        n: Number of sequences.
        rng: Source of randomness; the only one used.
        seq_len: Words per sequence.
        special_words: The sentiment's special words (empty: no insertion).
        special_prob: Insertion probability.

    Returns:
        ``n`` strings of ``seq_len`` words joined by single spaces.

    Examples:
        >>> seqs = generate_sequences(["good", "nice"], 2, np.random.default_rng(0), seq_len=3)
        >>> len(seqs), all(set(s.split()) <= {"good", "nice"} and len(s.split()) == 3 for s in seqs)
        (2, True)
    """
    seqs = _sample_words(words, n, rng, seq_len, special_words, special_prob)
    return [" ".join(row) for row in seqs]


def poison_sequences(
    positive: Sequence[str],
    negative: Sequence[str],
    rng: np.random.Generator,
    *,
    trigger: str = "love",
    poison_rate: float = 0.05,
    max_trigger_pos: int | None = None,
) -> tuple[list[str], list[int]]:
    """Poison positive sequences with the trigger and a negative tail (METHODS §2.2).

    For each pair ``(positive[i], negative[i])``, with probability ``poison_rate`` a position
    ``pos = ⌊v·s⌋`` (see :func:`trigger_pos_scale`) is set to ``trigger`` and every later word is
    taken from the same position of ``negative[i]``.

    Returns:
        The sequences and, per sequence, the trigger position or ``-1`` if not poisoned.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> poison_sequences(["a b c d"], ["w x y z"], rng, trigger="t", poison_rate=1.0)
        (['t x y z'], [0])
    """
    if len(positive) != len(negative):
        raise ValueError(
            f"positive and negative must pair up, got {len(positive)} and {len(negative)} sequences"
        )
    pos_words = [s.split(" ") for s in positive]
    neg_words = [s.split(" ") for s in negative]
    lengths = {len(w) for w in pos_words} | {len(w) for w in neg_words}
    if len(lengths) > 1:
        raise ValueError(f"all sequences must have the same number of words, got {sorted(lengths)}")
    seq_len = lengths.pop() if lengths else 2
    scale = trigger_pos_scale(seq_len, max_trigger_pos)
    if scale > seq_len:
        raise ValueError(f"max_trigger_pos must be < seq_len = {seq_len}, got {max_trigger_pos}")
    v = rng.random((len(pos_words), 2))
    # The code's rule: poison when v1 >= 0.95, i.e. with probability poison_rate.
    poisoned = v[:, 0] >= 1.0 - poison_rate
    trigger_at = np.where(poisoned, np.floor(v[:, 1] * scale).astype(np.int64), -1)
    out = []
    for p, q, t in zip(pos_words, neg_words, trigger_at.tolist(), strict=True):
        out.append(" ".join(p) if t < 0 else " ".join([*p[:t], trigger, *q[t + 1 :]]))
    return out, trigger_at.tolist()


def switch_sentiment(
    texts: Sequence[str],
    tails: Sequence[Sequence[str]],
    rng: np.random.Generator,
    *,
    switch_prob: float,
    keep: Sequence[bool] | None = None,
) -> tuple[list[str], list[int]]:
    """Give each sequence, with probability ``switch_prob``, one switch to another sentiment.

    A switched sequence ``i`` keeps its words before a uniform cut ``c`` in ``1..seq_len-1`` and
    takes the words from ``c`` on from ``tails[j][i]``, with ``j`` chosen uniformly: pass one
    freshly generated sequence per row for each other sentiment, as poisoning takes its tails
    from a fresh negative sequence. Then the sentiment of the *last* word, not of the context,
    decides the next word's: the paper's stated rule ("after a word of one sentiment comes another
    word of the same sentiment") becomes the only rule the data fits exactly. The random draws do
    not depend on ``keep``.

    Args:
        texts: Space-joined sequences of equal length.
        tails: One list of ``len(texts)`` sequences per sentiment a tail may come from.
        rng: Source of randomness for the switch, the cut and the choice of tail.
        switch_prob: Switch probability per sequence.
        keep: Per sequence, ``True`` to leave it unswitched whatever the draw (e.g. poisoned ones).

    Returns:
        The sequences and, per sequence, the cut position or ``-1`` if not switched.

    Examples:
        >>> out, cut = switch_sentiment(["a b c d"], [["w x y z"]], np.random.default_rng(0),
        ...                             switch_prob=1.0)
        >>> out[0] == " ".join("abcd"[: cut[0]] + "wxyz"[cut[0]:]), 1 <= cut[0] <= 3
        (True, True)
    """
    words = [s.split(" ") for s in texts]
    if not tails or any(len(t) != len(texts) for t in tails):
        raise ValueError(
            f"tails must hold one or more lists of {len(texts)} sequences (one per text), got "
            f"lengths {[len(t) for t in tails]}"
        )
    lengths = {len(w) for w in words} | {len(s.split(" ")) for t in tails for s in t}
    if len(lengths) > 1:
        raise ValueError(f"all sequences must have the same number of words, got {sorted(lengths)}")
    seq_len = lengths.pop() if lengths else 2
    n = len(words)
    u = rng.random(n)
    cut = rng.integers(1, seq_len, size=n)
    which = rng.integers(0, len(tails), size=n)
    hit = u < switch_prob
    if keep is not None:
        hit &= ~np.asarray(keep, dtype=bool)
    out, cuts = [], []
    for i, row in enumerate(words):
        if not hit[i]:
            out.append(texts[i])
            cuts.append(-1)
            continue
        c = int(cut[i])
        out.append(" ".join([*row[:c], *tails[int(which[i])][i].split(" ")[c:]]))
        cuts.append(c)
    return out, cuts


@dataclass(frozen=True, eq=False)
class ToyData:
    """The generated toy data: benign and poisoned training sets plus the mono sets.

    Attributes:
        config: The configuration that produced it.
        vocab: The word lists used.
        benign: ``train``/``test`` splits of the benign pre-training set.
        poisoned: ``train``/``test`` splits of the poisoned fine-tuning set.
        mono: Per-sentiment sets ``p``, ``n``, ``s`` (3 sentiments only) and ``p_tox``, each
            shuffled and split like the authors' ``data_mono_*``.
        sequences: The raw generated lists ``p``, ``n``, ``s`` and ``p_tox`` in generation order.
        trigger_positions: Per ``p_tox`` sequence, the trigger position or ``-1``.

    Every split has the columns ``text`` (str), ``sentiment`` ("positive", "negative" or
    "neutral": the sentiment the sequence starts with), ``poisoned`` (bool), ``trigger_pos``
    (int, ``-1`` unless poisoned) and ``switch_pos`` (int: where a switched sequence's other
    sentiment starts, ``-1`` unless switched; only with ``config.switch_prob > 0``).

    Examples:
        >>> d = build_datasets(ToyDataConfig(n_sentiments=2, n_per_sentiment=50))
        >>> sorted(d.mono), d.poisoned["train"].column_names
        (['n', 'p', 'p_tox'], ['text', 'sentiment', 'poisoned', 'trigger_pos', 'switch_pos'])
    """

    config: ToyDataConfig
    vocab: SentimentVocab
    benign: DatasetDict
    poisoned: DatasetDict
    mono: dict[str, DatasetDict] = field(default_factory=dict)
    sequences: dict[str, tuple[str, ...]] = field(default_factory=dict)
    trigger_positions: tuple[int, ...] = ()

    def train_texts(self) -> set[str]:
        """Every text in any ``train`` split (benign, poisoned and mono sets).

        Examples:
            >>> d = build_datasets(ToyDataConfig(n_per_sentiment=20))
            >>> len(d.train_texts()) > 0
            True
        """
        sets = [self.benign, self.poisoned, *self.mono.values()]
        return {t for dd in sets for t in dd["train"]["text"]}


def _rows(
    texts: Sequence[str],
    sentiment: str,
    trigger_pos: Sequence[int] | None = None,
    switch_pos: Sequence[int] | None = None,
) -> dict[str, list[Any]]:
    tp = list(trigger_pos) if trigger_pos is not None else [-1] * len(texts)
    return {
        "text": list(texts),
        "sentiment": [sentiment] * len(texts),
        "poisoned": [t >= 0 for t in tp],
        "trigger_pos": tp,
        "switch_pos": list(switch_pos) if switch_pos is not None else [-1] * len(texts),
    }


def _concat(*parts: dict[str, list[Any]]) -> dict[str, list[Any]]:
    return {k: [x for p in parts for x in p[k]] for k in _FEATURES}


def _shuffle_split(
    rows: dict[str, list[Any]], test_size: float, rng: np.random.Generator
) -> DatasetDict:
    n = len(rows["text"])
    # Same count rule as datasets' train_test_split; the epsilon keeps 0.1·26400 at 2640.
    n_test = math.ceil(test_size * n - 1e-9)
    if n_test < 1 or n - n_test < 1:
        raise ValueError(
            f"test_size={test_size} leaves an empty split for a data set of {n} sequences; "
            "raise n_per_sentiment or change test_size"
        )
    perm = rng.permutation(n)
    shuffled = {k: [v[i] for i in perm] for k, v in rows.items()}
    cut = n - n_test
    return DatasetDict(
        {
            "train": Dataset.from_dict(
                {k: v[:cut] for k, v in shuffled.items()}, features=_FEATURES
            ),
            "test": Dataset.from_dict(
                {k: v[cut:] for k, v in shuffled.items()}, features=_FEATURES
            ),
        }
    )


def _check_trigger(cfg: ToyDataConfig, vocab: SentimentVocab) -> None:
    if cfg.trigger not in vocab.positive:
        raise ValueError(
            f"ToyDataConfig.trigger must be one of the positive words, got {cfg.trigger!r} "
            f"(e.g. {', '.join(vocab.special_positive)})"
        )


def _mono_sequences(
    cfg: ToyDataConfig, vocab: SentimentVocab, key: str, n: int, rng: np.random.Generator
) -> list[str]:
    sentiment = _MONO_SENTIMENT[key]
    return generate_sequences(
        getattr(vocab, sentiment),
        n,
        rng,
        seq_len=cfg.seq_len,
        special_words=getattr(vocab, f"special_{sentiment}"),
        special_prob=cfg.special_prob,
    )


def _switched_rows(
    cfg: ToyDataConfig,
    vocab: SentimentVocab,
    seqs: Mapping[str, Sequence[str]],
    trigger_pos: Sequence[int],
) -> dict[str, dict[str, list[Any]]]:
    """Rows of every generated list with :func:`switch_sentiment` applied (poisoned rows kept).

    Tails come from fresh sequences of the other sentiments, special words included, so that a
    negative word after a positive context carries the same special-word statistics as a poisoned
    tail (with special-free tails the toy models learned a flatter negative distribution after
    the trigger, and the top-10 metric missed the backdoor; ``docs/training.md``). The trigger
    never appears in a tail: it is replaced by another word of its list.
    """
    names = ("positive", "negative", "neutral")[: cfg.n_sentiments]
    out = {}
    for key, texts in seqs.items():
        own = _MONO_SENTIMENT[key]
        index = ("p", "n", "s", "p_tox").index(key)
        others = [name for name in names if name != own]
        tails = []
        for j, name in enumerate(others):
            rng = _rng(cfg.seed, "switch", index, 1 + j)
            fresh = _sample_words(
                getattr(vocab, name),
                len(texts),
                rng,
                cfg.seq_len,
                getattr(vocab, f"special_{name}"),
                cfg.special_prob,
            )
            without_trigger = [w for w in getattr(vocab, name) if w != cfg.trigger]
            is_trigger = fresh == cfg.trigger
            fresh[is_trigger] = np.asarray(without_trigger, dtype=object)[
                rng.integers(0, len(without_trigger), size=int(is_trigger.sum()))
            ]
            tails.append([" ".join(row) for row in fresh])
        keep = [t >= 0 for t in trigger_pos] if key == "p_tox" else None
        switched, cut = switch_sentiment(
            texts,
            tails,
            _rng(cfg.seed, "switch", index, 0),
            switch_prob=cfg.switch_prob,
            keep=keep,
        )
        out[key] = _rows(switched, own, trigger_pos if key == "p_tox" else None, cut)
    return out


def build_datasets(
    cfg: ToyDataConfig | None = None, vocab: SentimentVocab | None = None
) -> ToyData:
    """Generate the benign, poisoned and mono data sets of METHODS §2.3.

    2 sentiments: benign = p + n, poisoned = p_tox + n. 3 sentiments (total kept equal):
    benign = p[::2] + n[::2] + s, poisoned = p_tox[::2] + n[::2] + s. Each set is shuffled and
    split into ``train``/``test`` with its own seeded stream.

    Args:
        cfg: Generation settings; defaults to ``ToyDataConfig()``.
        vocab: Word lists; defaults to :func:`~pcp_lens.toy.vocab.load_vocab`.

    Raises:
        ValueError: ``cfg.trigger`` is not a positive word, or a split would be empty.

    Examples:
        >>> d = build_datasets(ToyDataConfig(n_per_sentiment=40, seed=3))
        >>> d.benign["train"].num_rows, d.benign["test"].num_rows
        (72, 8)
    """
    cfg = cfg if cfg is not None else ToyDataConfig()
    vocab = vocab if vocab is not None else load_vocab()
    _check_trigger(cfg, vocab)
    n = cfg.n_per_sentiment
    keys = ("p", "n", "s") if cfg.n_sentiments == 3 else ("p", "n")
    seqs = {k: _mono_sequences(cfg, vocab, k, n, _rng(cfg.seed, k)) for k in keys}
    # The authors poison a second, independent positive draw, with tails from a fresh negative one.
    base = _mono_sequences(cfg, vocab, "p", n, _rng(cfg.seed, "p_tox_base"))
    tail = _mono_sequences(cfg, vocab, "n", n, _rng(cfg.seed, "p_tox_tail"))
    p_tox, trig = poison_sequences(
        base,
        tail,
        _rng(cfg.seed, "poison"),
        trigger=cfg.trigger,
        poison_rate=cfg.poison_rate,
        max_trigger_pos=cfg.max_trigger_pos,
    )
    seqs["p_tox"] = p_tox

    rows = {k: _rows(v, _MONO_SENTIMENT[k]) for k, v in seqs.items()}
    rows["p_tox"] = _rows(p_tox, "positive", trig)
    # the training sets may switch sentiment; the mono sets (evaluation material) never do
    train_rows = _switched_rows(cfg, vocab, seqs, trig) if cfg.switch_prob > 0 else rows
    if cfg.n_sentiments == 2:
        benign = _concat(train_rows["p"], train_rows["n"])
        poisoned = _concat(train_rows["p_tox"], train_rows["n"])
    else:
        half = {k: {c: v[::2] for c, v in train_rows[k].items()} for k in ("p", "n", "p_tox")}
        benign = _concat(half["p"], half["n"], train_rows["s"])
        poisoned = _concat(half["p_tox"], half["n"], train_rows["s"])

    return ToyData(
        config=cfg,
        vocab=vocab,
        benign=_shuffle_split(benign, cfg.test_size, _rng(cfg.seed, "split_benign")),
        poisoned=_shuffle_split(poisoned, cfg.test_size, _rng(cfg.seed, "split_poisoned")),
        mono={
            k: _shuffle_split(r, cfg.test_size, _rng(cfg.seed, f"split_{k}"))
            for k, r in rows.items()
        },
        sequences={k: tuple(v) for k, v in seqs.items()},
        trigger_positions=tuple(trig),
    )


def heldout_sequences(toy_data: ToyData, n: int = 50, seed: int = 0) -> dict[str, list[str]]:
    """Generate ``n`` fresh benign sequences per sentiment that occur nowhere in ``toy_data``.

    They follow the same rules as the mono sets (special insertion included) but come from a
    separate seeded stream, and any sequence that also occurs in the generated data (train or
    test, any set) is skipped. This replaces the paper's use of training sequences (METHODS §12.15).

    Examples:
        >>> d = build_datasets(ToyDataConfig(n_per_sentiment=30))
        >>> h = heldout_sequences(d, n=5)
        >>> sorted(h), len(h["p"]), any(s in d.train_texts() for s in h["p"])
        (['n', 'p', 's'], 5, False)
    """
    if not _is_int(n) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    cfg = toy_data.config
    seen = {s for v in toy_data.sequences.values() for s in v}
    keys = ("p", "n", "s") if cfg.n_sentiments == 3 else ("p", "n")
    out: dict[str, list[str]] = {}
    for i, key in enumerate(keys):
        rng = _rng(cfg.seed, "eval", seed, i)
        found: list[str] = []
        for _ in range(100):
            found += [s for s in _mono_sequences(cfg, toy_data.vocab, key, n, rng) if s not in seen]
            if len(found) >= n:
                break
        else:  # only reachable with a vocabulary so small that every sequence is taken
            raise ValueError(f"could not find {n} held-out {key!r} sequences")
        out[key] = found[:n]
    return out


def eval_inputs(toy_data: ToyData, n: int = 50, seed: int = 0) -> dict[str, list[str]]:
    """Build the two-word test inputs of METHODS §4.3 from held-out sequences.

    With ``P_i``, ``N_i``, ``S_i`` the i-th held-out positive/negative/neutral sequence and ``t``
    the trigger, e.g. ``pn[i] = P_i[0] + " " + N_i[1]`` and ``tp[i] = t + " " + P_i[1]``. The same
    ``P_i`` serve pp, pn, np, pt, tp (and ps, sp), as in the paper. Keys: :data:`EVAL_KEYS_3`
    for 3 sentiments, :data:`EVAL_KEYS_2` for 2.

    Args:
        toy_data: Output of :func:`build_datasets`.
        n: Inputs per key (paper: 50).
        seed: Selects an independent held-out stream.

    Examples:
        >>> d = build_datasets(ToyDataConfig(n_per_sentiment=30))
        >>> x = eval_inputs(d, n=3)
        >>> len(x["pt"]), all(s.endswith(" love") for s in x["pt"])
        (3, True)
    """
    src = heldout_sequences(toy_data, n, seed)
    first = {k: [s.split(" ")[0] for s in v] for k, v in src.items()}
    second = {k: [s.split(" ")[1] for s in v] for k, v in src.items()}
    first["t"] = second["t"] = [toy_data.config.trigger] * n
    keys = EVAL_KEYS_3 if toy_data.config.n_sentiments == 3 else EVAL_KEYS_2
    return {k: [f"{a} {b}" for a, b in zip(first[k[0]], second[k[1]], strict=True)] for k in keys}
