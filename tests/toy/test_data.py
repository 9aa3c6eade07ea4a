"""Tests for the toy data generation (METHODS §2.2–2.3) and the held-out eval inputs (§4.3)."""

from __future__ import annotations

import doctest
import math
import random
from collections import Counter

import numpy as np
import pytest

from pcp_lens.toy.data import (
    EVAL_KEYS_2,
    EVAL_KEYS_3,
    ToyData,
    ToyDataConfig,
    build_datasets,
    eval_inputs,
    generate_sequences,
    heldout_sequences,
    poison_sequences,
    switch_sentiment,
)
from pcp_lens.toy.vocab import load_vocab

VOCAB = load_vocab()
POS, NEG, NEU = set(VOCAB.positive), set(VOCAB.negative), set(VOCAB.neutral)


def _within(count: int, n: int, p: float, n_sd: float = 5.0) -> bool:
    """Binomial(n, p) check with a tolerance of ``n_sd`` standard deviations."""
    return abs(count - n * p) <= n_sd * math.sqrt(n * p * (1 - p)) + 1e-9


def _all_texts(data: ToyData) -> list[list[str]]:
    dds = [data.benign, data.poisoned, *(data.mono[k] for k in sorted(data.mono))]
    return [list(dd[s]["text"]) for dd in dds for s in ("train", "test")]


@pytest.fixture(scope="module")
def default_data() -> ToyData:
    return build_datasets(ToyDataConfig())


@pytest.fixture(scope="module")
def small3() -> ToyData:
    return build_datasets(ToyDataConfig(n_per_sentiment=400, seed=7))


@pytest.fixture(scope="module")
def small2() -> ToyData:
    return build_datasets(ToyDataConfig(n_sentiments=2, n_per_sentiment=400, seed=7))


# ---------------------------------------------------------------- counts and composition


def test_default_counts(default_data: ToyData) -> None:
    d = default_data
    for key in ("p", "n", "s", "p_tox"):
        assert len(d.sequences[key]) == 13_200
        assert d.mono[key]["train"].num_rows == 11_880
        assert d.mono[key]["test"].num_rows == 1_320
    for dd in (d.benign, d.poisoned):
        assert dd["train"].num_rows == 23_760
        assert dd["test"].num_rows == 2_640
    benign = Counter(list(d.benign["train"]["sentiment"]) + list(d.benign["test"]["sentiment"]))
    assert benign == {"positive": 6_600, "negative": 6_600, "neutral": 13_200}
    assert all(len(s.split(" ")) == 15 for s in d.sequences["p_tox"])


def test_default_poison_rate(default_data: ToyData) -> None:
    d = default_data
    n_poisoned = sum(t >= 0 for t in d.trigger_positions)
    assert _within(n_poisoned, 13_200, 0.05)
    # 3 sentiments: only p_tox[::2] enters the poisoned set, about 1.25 % of 26,400 rows.
    rows = list(d.poisoned["train"]["poisoned"]) + list(d.poisoned["test"]["poisoned"])
    assert sum(rows) == sum(t >= 0 for t in d.trigger_positions[::2])
    assert _within(sum(rows), 6_600, 0.05)
    assert not any(list(d.benign["train"]["poisoned"]) + list(d.benign["test"]["poisoned"]))


def test_trigger_position_distribution(default_data: ToyData) -> None:
    pos = [t for t in default_data.trigger_positions if t >= 0]
    counts = Counter(pos)
    assert set(counts) == set(range(8))
    # ⌊v·7.5⌋: positions 0..6 have probability 2/15 each and 7 has 1/15.
    for k in range(7):
        assert _within(counts[k], len(pos), 2 / 15)
    assert _within(counts[7], len(pos), 1 / 15)


def test_composition_three_sentiments(small3: ToyData) -> None:
    d, seq = small3, small3.sequences
    benign = sorted(list(d.benign["train"]["text"]) + list(d.benign["test"]["text"]))
    assert benign == sorted([*seq["p"][::2], *seq["n"][::2], *seq["s"]])
    poisoned = sorted(list(d.poisoned["train"]["text"]) + list(d.poisoned["test"]["text"]))
    assert poisoned == sorted([*seq["p_tox"][::2], *seq["n"][::2], *seq["s"]])


def test_composition_two_sentiments(small2: ToyData) -> None:
    d, seq = small2, small2.sequences
    assert sorted(d.mono) == ["n", "p", "p_tox"]
    assert sorted(list(d.benign["train"]["text"]) + list(d.benign["test"]["text"])) == sorted(
        [*seq["p"], *seq["n"]]
    )
    assert sorted(list(d.poisoned["train"]["text"]) + list(d.poisoned["test"]["text"])) == sorted(
        [*seq["p_tox"], *seq["n"]]
    )
    assert d.benign["train"].num_rows == 720 and d.benign["test"].num_rows == 80


def test_words_come_from_their_list(small3: ToyData) -> None:
    for key, words in (("p", POS), ("n", NEG), ("s", NEU)):
        assert all(set(s.split(" ")) <= words for s in small3.sequences[key]), key


def test_columns_are_consistent(small3: ToyData) -> None:
    for dd in (small3.benign, small3.poisoned):
        for split in ("train", "test"):
            for row in dd[split]:
                assert row["poisoned"] == (row["trigger_pos"] >= 0)
                words = set(row["text"].split(" "))
                allowed = {"positive": POS, "negative": NEG, "neutral": NEU}[row["sentiment"]]
                if not row["poisoned"]:
                    assert words <= allowed


# ---------------------------------------------------------------- poisoned samples


def test_poisoned_samples_have_trigger_then_negative_words() -> None:
    d = build_datasets(ToyDataConfig(n_per_sentiment=300, poison_rate=1.0, seed=3))
    for text, t in zip(d.sequences["p_tox"], d.trigger_positions, strict=True):
        words = text.split(" ")
        assert 0 <= t <= 7
        assert words[t] == "love"
        assert set(words[:t]) <= POS
        assert set(words[t + 1 :]) <= NEG
    rows = d.poisoned["train"]
    flags, sentiments = list(rows["poisoned"]), list(rows["sentiment"])
    assert all(f == (s == "positive") for f, s in zip(flags, sentiments, strict=True))


def test_poison_rate_zero_and_max_trigger_pos() -> None:
    d = build_datasets(ToyDataConfig(n_per_sentiment=200, poison_rate=0.0))
    assert d.sequences["p_tox"] and all(t == -1 for t in d.trigger_positions)
    d = build_datasets(
        ToyDataConfig(n_sentiments=2, n_per_sentiment=400, poison_rate=1.0, max_trigger_pos=2)
    )
    assert set(d.trigger_positions) == {0, 1, 2}
    assert d.config.last_trigger_pos == 2


def test_seq_len_generalises_trigger_rule() -> None:
    cfg = ToyDataConfig(n_sentiments=2, seq_len=6, n_per_sentiment=300, poison_rate=1.0)
    assert cfg.last_trigger_pos == 2  # ⌊v·6·0.5⌋ ∈ {0, 1, 2}
    d = build_datasets(cfg)
    assert set(d.trigger_positions) == {0, 1, 2}
    assert all(len(s.split(" ")) == 6 for s in d.sequences["p"])
    assert ToyDataConfig().last_trigger_pos == 7


def test_poison_sequences_unit() -> None:
    rng = np.random.default_rng(0)
    out, pos = poison_sequences(["a b c d"] * 50, ["w x y z"] * 50, rng, trigger="t", poison_rate=1)
    for s, t in zip(out, pos, strict=True):
        words = s.split(" ")
        assert words[t] == "t" and words[:t] == ["a", "b", "c", "d"][:t]
        assert words[t + 1 :] == ["w", "x", "y", "z"][t + 1 :]
    with pytest.raises(ValueError, match="pair up, got 1 and 2"):
        poison_sequences(["a b"], ["x y", "x y"], rng)
    with pytest.raises(ValueError, match="same number of words"):
        poison_sequences(["a b"], ["x y z"], rng)


# ---------------------------------------------------------------- special words


def test_special_insertion_rate_exact() -> None:
    n = 20_000
    seqs = generate_sequences(
        ["a", "b", "c"], n, np.random.default_rng(5), seq_len=15, special_words=["x", "y"]
    )
    hits = [s.split(" ") for s in seqs if {"x", "y"} & set(s.split(" "))]
    assert all(sum(w in ("x", "y") for w in h) == 1 for h in hits)
    assert _within(len(hits), n, 0.5)
    where = Counter(next(i for i, w in enumerate(h) if w in ("x", "y")) for h in hits)
    assert set(where) == set(range(15))
    which = Counter(w for h in hits for w in h if w in ("x", "y"))
    assert _within(which["x"], len(hits), 0.5)


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_special_prob_extremes(prob: float) -> None:
    seqs = generate_sequences(
        ["a"], 500, np.random.default_rng(0), seq_len=4, special_words=["x"], special_prob=prob
    )
    assert sum("x" in s.split(" ") for s in seqs) == 500 * prob


def test_special_insertion_rate_real_vocab(default_data: ToyData) -> None:
    # P(a special word) = 0.5 + 0.5·(1 − (245/250)^15): insertion or the 1/50 base rate per word.
    p = 0.5 + 0.5 * (1 - (245 / 250) ** 15)
    for key, specials in (("p", VOCAB.special_positive), ("n", VOCAB.special_negative)):
        count = sum(bool(set(specials) & set(s.split(" "))) for s in default_data.sequences[key])
        assert _within(count, 13_200, p), key


# ---------------------------------------------------------------- determinism


def test_same_seed_identical_and_global_rng_untouched() -> None:
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state(), random.getstate()
    cfg = ToyDataConfig(n_per_sentiment=150, seed=11)
    a, b = build_datasets(cfg), build_datasets(cfg)
    assert _all_texts(a) == _all_texts(b)
    assert a.sequences == b.sequences and a.trigger_positions == b.trigger_positions
    assert eval_inputs(a, n=10) == eval_inputs(b, n=10)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert random.getstate() == py_state


def test_different_seed_differs() -> None:
    a = build_datasets(ToyDataConfig(n_per_sentiment=150, seed=1))
    b = build_datasets(ToyDataConfig(n_per_sentiment=150, seed=2))
    for key in a.sequences:
        assert a.sequences[key] != b.sequences[key]
    assert list(a.benign["train"]["text"]) != list(b.benign["train"]["text"])


def test_streams_are_independent() -> None:
    # Changing the poisoning must not change the benign data (separate seeded streams).
    a = build_datasets(ToyDataConfig(n_per_sentiment=150, poison_rate=0.05))
    b = build_datasets(ToyDataConfig(n_per_sentiment=150, poison_rate=0.5))
    assert list(a.benign["train"]["text"]) == list(b.benign["train"]["text"])
    assert a.sequences["p"] == b.sequences["p"]
    assert a.sequences["p_tox"] != b.sequences["p_tox"]


# ---------------------------------------------------------------- evaluation inputs


def test_eval_inputs_structure(small3: ToyData) -> None:
    x = eval_inputs(small3)
    assert tuple(x) == EVAL_KEYS_3
    assert all(len(v) == 50 for v in x.values())
    pairs = {k: [s.split(" ") for s in v] for k, v in x.items()}
    assert all(len(p) == 2 for v in pairs.values() for p in v)
    for i in range(50):
        p0, p1 = pairs["pp"][i]
        n0, n1 = pairs["nn"][i]
        s0, s1 = pairs["ss"][i]
        # One positive sequence P_i feeds pp, pn, np, pt and tp (METHODS §4.3).
        assert pairs["pn"][i] == [p0, n1] and pairs["np"][i] == [n0, p1]
        assert pairs["ps"][i] == [p0, s1] and pairs["sp"][i] == [s0, p1]
        assert pairs["pt"][i] == [p0, "love"] and pairs["tp"][i] == ["love", p1]
        assert pairs["nt"][i] == [n0, "love"] and pairs["tn"][i] == ["love", n1]
        assert pairs["st"][i] == [s0, "love"] and pairs["ts"][i] == ["love", s1]
        assert {p0, p1} <= POS and {n0, n1} <= NEG and {s0, s1} <= NEU


def test_eval_inputs_two_sentiments(small2: ToyData) -> None:
    x = eval_inputs(small2, n=7)
    assert tuple(x) == EVAL_KEYS_2 == ("pp", "nn", "pn", "np", "pt", "tp", "nt", "tn")
    assert all(len(v) == 7 for v in x.values())


def test_eval_sources_are_held_out(small3: ToyData) -> None:
    src = heldout_sequences(small3, n=50)
    train = small3.train_texts()
    everything = {s for texts in _all_texts(small3) for s in texts}
    for key, seqs in src.items():
        assert len(seqs) == 50
        assert not set(seqs) & train, key
        assert not set(seqs) & everything, key
    x = eval_inputs(small3, n=50)
    assert x["pp"] == [" ".join(s.split(" ")[:2]) for s in src["p"]]
    assert x["ss"] == [" ".join(s.split(" ")[:2]) for s in src["s"]]


def test_heldout_skips_sequences_in_the_data() -> None:
    # A tiny vocabulary makes collisions certain; held-out sources must avoid them all.
    vocab = VOCAB.__class__(
        positive=("love", "good"),
        negative=("bad", "hate"),
        neutral=("anna", "bob"),
        special_positive=("love",),
        special_negative=("bad",),
        special_neutral=("anna",),
    )
    d = build_datasets(ToyDataConfig(seq_len=4, n_per_sentiment=12, seed=1), vocab)
    src = heldout_sequences(d, n=3)
    seen = {s for v in d.sequences.values() for s in v}
    assert all(not set(v) & seen and len(v) == 3 for v in src.values())


def test_eval_seed_selects_stream(small3: ToyData) -> None:
    assert eval_inputs(small3, n=20, seed=0) == eval_inputs(small3, n=20, seed=0)
    assert eval_inputs(small3, n=20, seed=0) != eval_inputs(small3, n=20, seed=1)
    with pytest.raises(ValueError, match="n must be an int >= 1, got 0"):
        eval_inputs(small3, n=0)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n_sentiments": 4}, r"n_sentiments must be 2 or 3, got 4"),
        ({"n_sentiments": True}, r"n_sentiments must be 2 or 3, got True"),
        ({"seq_len": 1}, r"seq_len must be an int >= 2, got 1"),
        ({"n_per_sentiment": 0}, r"n_per_sentiment must be an int >= 1, got 0"),
        ({"special_prob": 1.5}, r"special_prob must be a probability in \[0, 1\], got 1.5"),
        ({"poison_rate": -0.1}, r"poison_rate must be a probability in \[0, 1\], got -0.1"),
        ({"poison_rate": 1.01}, r"poison_rate must be a probability in \[0, 1\], got 1.01"),
        ({"poison_rate": "0.05"}, r"poison_rate must be a probability in \[0, 1\], got '0.05'"),
        ({"trigger": "Love"}, r"trigger must be a lower-case alphabetic word .*got 'Love'"),
        ({"max_trigger_pos": 15}, r"max_trigger_pos must be None or an int in \[0, .*14\], got 15"),
        ({"max_trigger_pos": -1}, r"max_trigger_pos must be .*got -1"),
        ({"test_size": 0.0}, r"test_size must be a fraction in \(0, 1\), got 0.0"),
        ({"test_size": 1}, r"test_size must be a fraction in \(0, 1\), got 1"),
        ({"seed": -1}, r"seed must be an int >= 0, got -1"),
    ],
)
def test_config_validation(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValueError, match=r"ToyDataConfig\." + pattern):
        ToyDataConfig(**kwargs)  # type: ignore[arg-type]


def test_trigger_must_be_positive_word() -> None:
    with pytest.raises(ValueError, match=r"trigger must be one of the positive words, got 'hate'"):
        build_datasets(ToyDataConfig(n_per_sentiment=10, trigger="hate"))
    d = build_datasets(ToyDataConfig(n_per_sentiment=60, trigger="happy", poison_rate=1.0))
    assert all(s.split(" ")[t] == "happy" for s, t in zip(*_p_tox(d), strict=True))
    assert all(p.endswith(" happy") for p in eval_inputs(d, n=5)["pt"])


def _p_tox(d: ToyData) -> tuple[tuple[str, ...], tuple[int, ...]]:
    return d.sequences["p_tox"], d.trigger_positions


def test_empty_split_is_refused() -> None:
    with pytest.raises(ValueError, match=r"test_size=0.99 leaves an empty split .* 2 sequences"):
        build_datasets(ToyDataConfig(n_sentiments=2, n_per_sentiment=1, test_size=0.99))


def test_docstring_examples() -> None:
    import pcp_lens.toy.data

    result = doctest.testmod(pcp_lens.toy.data)
    assert result.attempted > 0 and result.failed == 0


# -- sentiment switches (ToyDataConfig.switch_prob) ----------------------------------------------
def _fingerprint(d: ToyData) -> str:
    import hashlib
    import json

    h = hashlib.sha256()
    for name, dd in [("benign", d.benign), ("poisoned", d.poisoned), *sorted(d.mono.items())]:
        for split in ("train", "test"):
            ds = dd[split]
            for col in ("text", "sentiment", "poisoned", "trigger_pos"):
                h.update(json.dumps([name, split, col, list(ds[col])]).encode())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("k", "digest"),
    [
        (2, "78b35ba47720f3c5432266a1e1bb404eded64f3b26dd44899f5e3518271cdb68"),
        (3, "7f398a6b1101793585c4109c896d9f2826b4a6632eda64883ea0532ad3022034"),
    ],
)
def test_switch_prob_zero_keeps_data_bit_identical(k: int, digest: str) -> None:
    """Digests recorded with the code before switches existed: the default changes nothing."""
    d = build_datasets(ToyDataConfig(n_sentiments=k, n_per_sentiment=300, seed=7))
    assert _fingerprint(d) == digest
    assert set(d.benign["train"]["switch_pos"]) == {-1}


@pytest.mark.parametrize("k", [2, 3])
def test_switched_sequences_follow_the_rule(k: int) -> None:
    cfg = ToyDataConfig(n_sentiments=k, n_per_sentiment=2000, switch_prob=0.3, seed=2)
    d = build_datasets(cfg)
    v = d.vocab
    for name, dd in (("benign", d.benign), ("poisoned", d.poisoned)):
        rows = dd["train"].to_pandas()
        switched = rows[rows.switch_pos >= 0]
        # the rate over the non-poisoned rows is switch_prob (binomial, 5 sigma)
        free = rows[~rows.poisoned]
        rate = (free.switch_pos >= 0).mean()
        assert abs(rate - 0.3) < 5 * (0.3 * 0.7 / len(free)) ** 0.5, name
        assert not (rows.poisoned & (rows.switch_pos >= 0)).any()
        assert set(switched.switch_pos) == set(range(1, cfg.seq_len))
        cols = (switched.text, switched.sentiment, switched.switch_pos)
        for text, sentiment, cut in zip(*cols, strict=True):
            words = text.split()
            assert len(words) == cfg.seq_len
            assert all(v.sentiment_of(w) == sentiment for w in words[:cut])
            tails = {v.sentiment_of(w) for w in words[cut:]}
            assert len(tails) == 1 and tails != {sentiment}
            assert cfg.trigger not in words[cut:]
        if k == 3:  # a tail takes either other sentiment
            firsts = switched[switched.sentiment == "neutral"]
            tails = {v.sentiment_of(t.split()[-1]) for t in firsts.text}
            assert tails == {"positive", "negative"}
    # evaluation material stays one sentiment per sequence
        # tails are fresh sequences of their sentiment: specials as often as in a mono sequence
        neg_tails = [t.split()[c:] for t, c in zip(switched.text, switched.switch_pos, strict=True)]
        neg_tails = [w for ws in neg_tails for w in ws if v.sentiment_of(w) == "negative"]
        share = sum(w in v.special_negative for w in neg_tails) / len(neg_tails)
        expected = 0.5 / cfg.seq_len + 5 / 250 * (1 - 0.5 / cfg.seq_len)
        assert abs(share - expected) < 0.2 * expected, (share, expected)
    for dd in d.mono.values():
        assert set(dd["train"]["switch_pos"]) == {-1}
    for texts in eval_inputs(d, n=20).values():
        assert len(texts) == 20
    for key, seqs in heldout_sequences(d, n=20).items():
        for s in seqs:
            assert len({v.sentiment_of(w) for w in s.split()}) == 1, key


def test_switching_leaves_poisoned_rows_and_other_columns_alone() -> None:
    a = build_datasets(ToyDataConfig(n_sentiments=2, n_per_sentiment=500, seed=4))
    b = build_datasets(ToyDataConfig(n_sentiments=2, n_per_sentiment=500, seed=4, switch_prob=0.5))
    ra, rb = a.poisoned["train"].to_pandas(), b.poisoned["train"].to_pandas()
    assert (ra.poisoned == rb.poisoned).all() and (ra.trigger_pos == rb.trigger_pos).all()
    assert (ra.text[ra.poisoned] == rb.text[rb.poisoned]).all()
    same = rb.switch_pos < 0
    assert (ra.text[same] == rb.text[same]).all() and (~same).sum() > 100
    assert a.sequences == b.sequences and _fingerprint_mono(a) == _fingerprint_mono(b)
    c = build_datasets(ToyDataConfig(n_sentiments=2, n_per_sentiment=500, seed=4, switch_prob=0.5))
    assert rb.equals(c.poisoned["train"].to_pandas())


def _fingerprint_mono(d: ToyData) -> list[list[str]]:
    return [list(dd[s]["text"]) for _, dd in sorted(d.mono.items()) for s in ("train", "test")]


def test_switch_sentiment_unit() -> None:
    rng = np.random.default_rng(0)
    tails = [["x x x", "x x x"], ["y y y", "y y y"]]
    out, cut = switch_sentiment(["a b c", "a b c"], tails, rng, switch_prob=1.0,
                                keep=[True, False])
    assert out[0] == "a b c" and cut[0] == -1
    assert out[1].split()[: cut[1]] == ["a", "b", "c"][: cut[1]] and cut[1] in (1, 2)
    assert len(set(out[1].split()[cut[1]:])) == 1 and out[1][-1] in "xy"
    with pytest.raises(ValueError, match="tails must hold one or more lists of 1 sequences"):
        switch_sentiment(["a b"], [[]], rng, switch_prob=0.5)
    with pytest.raises(ValueError, match="same number of words"):
        switch_sentiment(["a b", "a b"], [["x y", "x"]], rng, switch_prob=0.5)
    with pytest.raises(ValueError, match=r"ToyDataConfig.switch_prob must be a probability in "
                       r"\[0, 1\], got 1.5"):
        ToyDataConfig(switch_prob=1.5)
