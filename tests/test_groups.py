"""Token groups and group metrics, checked against brute-force Python loops."""

from __future__ import annotations

import itertools
import re
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pcp_lens.groups import (
    GroupMetric,
    PositionMetric,
    TokenGroups,
    group_metrics,
    group_scores,
    mean_logit,
    prob_mass,
    select_positions,
    topk_share,
)


def quiet_groups(groups, d_vocab: int) -> TokenGroups:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TokenGroups(groups, d_vocab)


def brute_topk_share(logits: torch.Tensor, groups: dict[str, list[int]], k: int) -> torch.Tensor:
    """Pure-Python top-k share: sort each row, take the k largest, count group members."""
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1]).tolist()
    out = []
    for row in flat:
        top = sorted(range(len(row)), key=lambda i: row[i], reverse=True)[:k]
        out.append([sum(i in set(ids) for i in top) / k for ids in groups.values()])
    return torch.tensor(out, dtype=torch.float64).reshape(*lead, len(groups))


@st.composite
def topk_cases(draw):
    d_vocab = draw(st.integers(2, 40))
    shape = draw(st.sampled_from([(), (3,), (2, 3, 4)]))
    n_groups = draw(st.integers(1, 4))
    groups = {
        f"g{i}": draw(st.lists(st.integers(0, d_vocab - 1), min_size=1, max_size=d_vocab))
        for i in range(n_groups)
    }
    k = draw(st.integers(1, d_vocab))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return d_vocab, shape, groups, k, seed, dtype


@settings(max_examples=150, deadline=None)
@given(topk_cases())
def test_topk_share_matches_brute_force(case):
    d_vocab, shape, groups, k, seed, dtype = case
    g = quiet_groups(groups, d_vocab)
    # a random permutation gives distinct logits, so the top k is unique (no ties)
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.tensor(shape).prod()) if shape else 1
    logits = torch.stack([torch.randperm(d_vocab, generator=gen) for _ in range(n)])
    logits = (logits.to(dtype) * 0.37 - 3).reshape(*shape, d_vocab)
    got = topk_share(logits, g, k)
    assert got.shape == (*shape, len(groups))
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), brute_topk_share(logits, groups, k), rtol=0, atol=1e-6)


def test_topk_share_default_k_is_10_and_paper_example():
    g = TokenGroups({"neg": list(range(10)), "pos": list(range(10, 20))}, d_vocab=30)
    logits = torch.zeros(30)
    logits[[0, 1, 2, 10, 11, 20, 21, 22, 23, 24]] = 5.0  # 3 negative, 2 positive, 5 other
    assert topk_share(logits, g).tolist() == pytest.approx([0.3, 0.2])
    assert group_scores(logits, g).tolist() == pytest.approx([0.3, 0.2])


def test_topk_share_k1_is_argmax_membership():
    g = TokenGroups({"a": [0, 1], "b": [2], "c": [3, 4, 5]}, d_vocab=6)
    logits = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    got = topk_share(logits, g, k=1)
    want = torch.stack([g.mask()[:, i] for i in logits.argmax(-1)]).float()
    assert torch.equal(got, want)
    assert torch.equal(got.sum(-1), torch.ones(50))  # a partition: exactly one group wins


def test_topk_share_k_equal_d_vocab_is_group_size_fraction():
    g = quiet_groups({"a": [0, 1, 2], "b": [5], "c": list(range(8))}, d_vocab=8)
    logits = torch.randn(2, 3, 8)
    got = topk_share(logits, g, k=8)
    assert torch.allclose(got, torch.tensor([3 / 8, 1 / 8, 1.0]).expand(2, 3, 3))


def test_topk_share_on_integer_logits_returns_float():
    g = TokenGroups({"a": [2]}, d_vocab=4)
    assert topk_share(torch.tensor([0, 1, 5, 2]), g, k=2).tolist() == [0.5]


@pytest.mark.parametrize("k", [0, -1, 9, 100, 2.0, "3", None])
def test_topk_share_bad_k(k):
    g = TokenGroups({"a": [0]}, d_vocab=8)
    with pytest.raises(
        ValueError, match=re.escape(f"k must be an int in 1..8 (d_vocab), got {k!r}")
    ):
        topk_share(torch.zeros(8), g, k=k)  # type: ignore[arg-type]


def test_logits_width_must_match_d_vocab():
    g = TokenGroups({"a": [0]}, d_vocab=8)
    for fn in (topk_share, prob_mass, mean_logit):
        with pytest.raises(ValueError, match=r"logits have 9 entries .* built for d_vocab=8"):
            fn(torch.zeros(2, 9), g)


# -- validation of groups ----------------------------------------------------------------------
def test_group_validation_errors():
    with pytest.raises(ValueError, match="group 'neg' is empty; every group needs at least one"):
        TokenGroups({"pos": [1], "neg": []}, d_vocab=10)
    with pytest.raises(
        ValueError,
        match=re.escape("group 'neg' has token ids out of range: [10]; allowed: 0..9 (d_vocab=10)"),
    ):
        TokenGroups({"neg": [3, 10]}, d_vocab=10)
    with pytest.raises(ValueError, match=re.escape("token ids out of range: [-1]; allowed: 0..9")):
        TokenGroups({"neg": [-1, 3]}, d_vocab=10)
    with pytest.raises(
        ValueError,
        match=re.escape("group 'neg' must hold integer token ids, got dtype torch.float"),
    ):
        TokenGroups({"neg": [1.0, 2.0]}, d_vocab=10)
    with pytest.raises(ValueError, match="must hold integer token ids"):
        TokenGroups({"neg": [1, 2.5]}, d_vocab=10)
    with pytest.raises(ValueError, match="must hold integer token ids"):
        TokenGroups({"neg": torch.tensor([1.0])}, d_vocab=10)
    with pytest.raises(
        ValueError, match=re.escape("must hold integer token ids, got dtype torch.bool")
    ):
        TokenGroups({"neg": [True, False]}, d_vocab=10)
    with pytest.raises(ValueError, match="groups must name at least one group"):
        TokenGroups({}, d_vocab=10)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="d_vocab must be a positive int"):
            TokenGroups({"a": [0]}, d_vocab=bad)  # type: ignore[arg-type]


def test_groups_accept_tensors_and_deduplicate():
    g = TokenGroups({"a": torch.tensor([4, 1, 4]), "b": (2,)}, d_vocab=5)
    assert g.groups == {"a": (1, 4), "b": (2,)}
    assert g.sizes.tolist() == [2, 1]
    assert g.mask().tolist() == [
        [False, True, False, False, True],
        [False, False, True, False, False],
    ]
    assert g.index("b") == 1
    with pytest.raises(ValueError, match=r"unknown group 'c'; groups are \['a', 'b'\]"):
        g.index("c")


def test_overlap_is_reported_not_refused():
    with pytest.warns(UserWarning, match=r"token groups overlap: \{\('pos', 'trig'\): 2\}"):
        g = TokenGroups({"neg": [0, 1], "pos": [2, 3, 4], "trig": [3, 4, 5]}, d_vocab=8)
    assert g.overlaps() == {("pos", "trig"): 2}
    with pytest.warns(UserWarning, match="overlap"):
        g3 = TokenGroups({"a": [0, 1, 2], "b": [1, 2], "c": [2]}, d_vocab=3)
    assert g3.overlaps() == {("a", "b"): 2, ("a", "c"): 1, ("b", "c"): 1}
    # overlapping ids count for both groups
    assert topk_share(torch.tensor([0.0, 0, 9]), g3, k=1).tolist() == [1.0, 1.0, 1.0]


def test_disjoint_groups_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = TokenGroups({"a": [0, 1], "b": [2]}, d_vocab=4)
    assert g.overlaps() == {}


# -- probability mass and mean logit -----------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_prob_mass_over_a_partition_sums_to_one(d_vocab, n_groups, seed):
    gen = torch.Generator().manual_seed(seed)
    label = torch.randint(0, n_groups, (d_vocab,), generator=gen)
    label[:n_groups] = torch.arange(n_groups)[: min(n_groups, d_vocab)]  # no empty group
    n_groups = min(n_groups, d_vocab)
    groups = {f"g{i}": torch.nonzero(label == i).flatten().tolist() for i in range(n_groups)}
    g = TokenGroups(groups, d_vocab)
    logits = 4 * torch.randn(2, 3, d_vocab, generator=gen, dtype=torch.float64)
    pm = prob_mass(logits, g)
    assert pm.shape == (2, 3, n_groups)
    assert pm.dtype == torch.float64
    torch.testing.assert_close(
        pm.sum(-1), torch.ones(2, 3, dtype=torch.float64), rtol=0, atol=1e-12
    )
    p = logits.softmax(-1)
    for i, ids in enumerate(groups.values()):
        torch.testing.assert_close(pm[..., i], p[..., ids].sum(-1), rtol=0, atol=1e-12)


def test_mean_logit_matches_manual_loop():
    gen = torch.Generator().manual_seed(3)
    groups = {"a": [0, 5, 7], "b": [1], "c": [2, 3, 4, 5]}
    g = quiet_groups(groups, 9)
    logits = torch.randn(4, 2, 9, generator=gen, dtype=torch.float64)
    got = mean_logit(logits, g)
    assert got.dtype == torch.float64
    for idx in itertools.product(range(4), range(2)):
        row = logits[idx].tolist()
        for j, ids in enumerate(groups.values()):
            assert got[idx][j].item() == pytest.approx(
                sum(row[i] for i in ids) / len(ids), abs=1e-12
            )
    assert group_scores(logits, g, "logit").equal(got)
    assert group_scores(logits, g, "prob").equal(prob_mass(logits, g))


def test_low_precision_logits_are_summed_in_float32():
    g = TokenGroups({"a": list(range(100))}, d_vocab=200)
    logits = torch.zeros(200, dtype=torch.bfloat16)
    assert prob_mass(logits, g).dtype == torch.float32
    assert prob_mass(logits, g).item() == pytest.approx(0.5, abs=1e-6)
    assert mean_logit(logits.float() + 1, g).item() == 1.0


def test_group_scores_unknown_stat():
    g = TokenGroups({"a": [0]}, d_vocab=2)
    with pytest.raises(ValueError, match="stat must be one of 'topk', 'prob', 'logit', got 'max'"):
        group_scores(torch.zeros(2), g, "max")  # type: ignore[arg-type]


# -- GroupMetric -------------------------------------------------------------------------------
@pytest.fixture
def g8() -> TokenGroups:
    return TokenGroups({"neg": [0, 1, 2], "pos": [3, 4]}, d_vocab=8)


def test_group_metric_default_reads_last_position(g8):
    logits = torch.randn(5, 4, 8, generator=torch.Generator().manual_seed(1))
    m = GroupMetric(g8, "neg", k=3)
    assert m.positions == (-1,)
    want = topk_share(logits[:, -1], g8, 3)[:, 0].mean()
    assert m(logits).item() == pytest.approx(want.item(), abs=1e-7)


def test_group_metric_positions_and_reduce_none(g8):
    logits = torch.randn(5, 4, 8, generator=torch.Generator().manual_seed(2))
    m = GroupMetric(g8, "pos", stat="prob", positions=[0, -2], reduce="none")
    assert m.positions == (0, -2)
    out = m(logits)
    assert out.shape == (5, 2)
    torch.testing.assert_close(out[:, 0], prob_mass(logits[:, 0], g8)[:, 1])
    torch.testing.assert_close(out[:, 1], prob_mass(logits[:, 2], g8)[:, 1])
    mean = GroupMetric(g8, "pos", stat="prob", positions=(0, -2))(logits)
    assert mean.shape == ()
    assert mean.item() == pytest.approx(out.mean().item(), abs=1e-7)
    # score() takes logits already restricted to the positions
    torch.testing.assert_close(m.score(logits[:, [0, 2]]), out)


@pytest.mark.parametrize("pos", [4, -5, 100])
def test_group_metric_position_out_of_range(g8, pos):
    m = GroupMetric(g8, "neg", positions=(0, pos), k=2)
    with pytest.raises(
        ValueError,
        match=re.escape(f"position out of range: {pos}; sequences have 4 tokens, allowed"),
    ):
        m(torch.zeros(2, 4, 8))


def test_select_positions_negative_and_error():
    x = torch.arange(2 * 5).reshape(2, 5)
    assert select_positions(x, [-1, 0, -4]).tolist() == [[4, 0, 1], [9, 5, 6]]
    with pytest.raises(ValueError, match="position out of range: 5"):
        select_positions(x, [5])
    # one position rule for the library: 0 and -5 are the same position of 5
    with pytest.raises(ValueError, match=re.escape("the same position twice for sequences of 5")):
        select_positions(x, [-1, 0, -5])


def test_group_metric_validates_at_construction(g8):
    with pytest.raises(ValueError, match="unknown group 'trigger'"):
        GroupMetric(g8, "trigger")
    with pytest.raises(ValueError, match=re.escape("k must be an int in 1..8 (d_vocab), got 10")):
        GroupMetric(g8, "neg")  # default k=10 > d_vocab=8
    with pytest.raises(ValueError, match=r"k must be an int in 1\.\.8 .* got 0"):
        GroupMetric(g8, "neg", k=0)
    with pytest.raises(ValueError, match="stat must be one of"):
        GroupMetric(g8, "neg", stat="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduce must be 'mean' or 'none', got 'sum'"):
        GroupMetric(g8, "neg", k=2, reduce="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positions must name at least one position"):
        GroupMetric(g8, "neg", k=2, positions=())


def test_group_metrics_one_per_group(g8):
    ms = group_metrics(g8, stat="topk", k=2, positions=[1])
    assert list(ms) == ["neg", "pos"]
    logits = torch.zeros(3, 2, 8)
    logits[:, 1, 3] = 2
    logits[:, 1, 0] = 1
    assert ms["neg"](logits).item() == 0.5
    assert ms["pos"](logits).item() == 0.5
    assert ms["pos"].positions == (1,)


# -- building groups from words ----------------------------------------------------------------
def test_from_words_with_word_level_tokenizer(wtok):
    with pytest.warns(UserWarning, match=r"2 words are not single tokens: \['the cat', 'zebra'\]"):
        g = TokenGroups.from_words(
            wtok, {"positive": ["good", "great", "the cat"], "negative": ["bad", "awful", "zebra"]}
        )
    # the word-level tokenizer maps both "good" and " good" to the same id; "zebra" is unknown
    # and must not be counted as its unk id 0
    assert g.groups == {"positive": (6, 7), "negative": (8, 9)}
    assert g.d_vocab == len(wtok) == 12
    assert TokenGroups.from_words(wtok, {"a": ["dog"]}, d_vocab=50).d_vocab == 50


def test_from_words_skips_words_a_raising_tokenizer_lacks():
    """The toy tokenizer raises a bare Exception on unknown words: skipped with the warning."""
    from pcp_lens.toy.tokenizer import build_tokenizer

    tok = build_tokenizer(["good", "bad", "love"])
    with pytest.warns(UserWarning, match=r"1 words are not single tokens: \['zebra'\]"):
        g = TokenGroups.from_words(
            tok, {"positive": ["good", "love"], "negative": ["bad", "zebra"]}
        )
    assert g.groups["negative"] == (tok.convert_tokens_to_ids("bad"),)


def test_group_metrics_refuse_bad_logits_and_positions(g8):
    m = GroupMetric(g8, "neg", k=2)
    for bad in (torch.zeros(8), torch.zeros(2, 8), torch.zeros(1, 2, 3, 8)):
        with pytest.raises(
            ValueError,
            match=re.escape(
                f"logits must be a tensor [batch, pos, d_vocab], got {tuple(bad.shape)}"
            ),
        ):
            m(bad)
    with pytest.raises(
        ValueError, match=re.escape("logits must be a tensor [batch, pos, d_vocab]")
    ):
        PositionMetric(lambda lg: lg.mean())(torch.zeros(8))
    with pytest.raises(ValueError, match=re.escape("but the groups were built for d_vocab=8")):
        m(torch.zeros(2, 3, 9))
    for bad, shown in [((1.5,), "got 1.5 in (1.5,)"), ((True,), "got True"), ((0, 0), "got [0]")]:
        with pytest.raises(ValueError, match=re.escape(shown)):
            GroupMetric(g8, "neg", k=2, positions=bad)
        with pytest.raises(ValueError, match=re.escape(shown)):
            PositionMetric(lambda lg: lg.mean(), positions=bad)
    assert GroupMetric(g8, "neg", k=2, positions=2).positions == (2,)  # the one rule: a bare int
    assert group_metrics(g8, k=2, positions=1)["neg"].positions == (1,)
    with pytest.raises(ValueError, match="fn must be a callable selected_logits -> Tensor, got 3"):
        PositionMetric(3)  # type: ignore[arg-type]


def test_from_words_with_the_real_gpt2_tokenizer(gpt2_tokenizer):
    with pytest.warns(UserWarning, match=r"1 words are not single tokens: \['xylophone'\]"):
        g = TokenGroups.from_words(
            gpt2_tokenizer,
            {"positive": ["good", "great"], "negative": ["bad", "awful", "xylophone"]},
        )
    assert g.d_vocab == 50257
    # GPT-2 ids: good 11274, " good" 922, great 18223, " great" 1049, bad 14774, " bad" 2089,
    # " awful" 12659 ("awful" without a space is two tokens)
    assert g.groups == {"positive": (922, 1049, 11274, 18223), "negative": (2089, 12659, 14774)}
    g2 = TokenGroups.from_words(gpt2_tokenizer, {"names": ["James"]}, with_space=False)
    assert g2.groups == {"names": (14731,)}
