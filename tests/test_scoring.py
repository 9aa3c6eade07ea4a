"""The one metric contract and the one position rule, as every technique applies them."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from pcp_lens import (
    GroupMetric,
    PositionMetric,
    TokenGroups,
    ablation_sweep,
    causal_patching,
    collect_stats,
    fit_pcp,
    group_lens,
    score_inputs,
)
from pcp_lens.scoring import (
    COLUMNS,
    PositionedMetric,
    RowMean,
    call_metric,
    check_metric,
    check_positions,
    declared_positions,
    named_metrics,
    resolve_positions,
    tidy_table,
)

V = 50


def _toks(n: int, p: int, seed: int) -> torch.Tensor:
    return torch.randint(1, V, (n, p), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return _toks(6, 4, 0)


# -- every technique, reduced to "the value of this metric on the unedited model" --------------
def _ablation(model, tokens, metric) -> float:
    df = ablation_sweep(model, tokens, {"m": metric}, ["mlp0"], method="zero", progress=False)
    return float(df[df.site == "unchanged"]["value"].iloc[0])


def _lens(model, tokens, metric) -> float:
    df = group_lens(model, tokens, {"m": metric}, positions=[-1], sites=["mlp0"], progress=False)
    return float(df[df.site == "full"]["value"].iloc[0])


def _patching(model, tokens, metric) -> float:
    # the baseline is the metric of the unpatched target run: the corrupted input, here `tokens`
    df = causal_patching(model, _toks(6, 4, 1), tokens, metric, ["mlp0"], [0], progress=False)
    return float(df["baseline"].iloc[0])


def _tuning(model, tokens, metric) -> float:
    return score_inputs(model, {"a": tokens}, {"m": metric})[("a", "m")]  # type: ignore[index]


TECHNIQUES: dict[str, Callable[..., float]] = {
    "ablation": _ablation,
    "lens": _lens,
    "patching": _patching,
    "tuning": _tuning,
}

# the same quantity written as each kind of metric the contract allows
METRICS = {
    "plain scalar": lambda lg: lg[:, -1, 3].mean(),
    "plain per prompt": lambda lg: lg[:, -1, 3],
    "positioned scalar": PositionMetric(lambda lg: lg[:, 0, 3].mean(), positions=(-1,)),
    "positioned per prompt": PositionMetric(lambda lg: lg[:, 0, 3], positions=-1),
}


@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize("kind", METRICS)
def test_every_technique_scores_every_kind_of_metric_alike(model, tokens, technique, kind):
    with torch.no_grad():
        want = float(model(tokens)[:, -1, 3].mean())
    got = TECHNIQUES[technique](model, tokens, METRICS[kind])
    assert got == pytest.approx(want, abs=1e-5)


def _nan(lg):
    return lg[:, -1, 0].mean() * float("nan")


BAD_METRICS = [
    ("neg", " must be a callable logits [batch, pos, d_vocab] -> Tensor or an object with "),
    # patching takes one metric, named "metric"; the others a mapping, here {"m": ...}
    (_nan, " returned non-finite values (nan or inf)"),
    (lambda lg: lg[0, -1, :2], " must return a scalar (a mean over the batch) or "),
    (lambda lg: "high", " must return a Tensor or a number, got str"),
    (lambda lg: lg[:, -1, 0] > 0, " must return real numbers, got torch.bool"),
]


@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize(
    "metric,match", BAD_METRICS, ids=lambda x: getattr(x, "__name__", str(x))[:30]
)
def test_every_technique_refuses_a_bad_metric_alike(model, tokens, technique, metric, match):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=re.escape(match)) as err:
        TECHNIQUES[technique](model, tokens, metric)
    assert str(err.value).startswith(("metric 'm' ", "metric ")), err
    # the conftest fixture checks that no hook is left behind; weights are untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class _Declares:
    """A metric object that declares bad positions: refused by every technique, alike."""

    def __init__(self, positions):
        self.positions = positions

    def score(self, selected):
        return selected.mean()

    def __call__(self, logits):
        return logits.mean()


@pytest.mark.parametrize("technique", ["ablation", "lens", "patching", "tuning"])
@pytest.mark.parametrize(
    "positions,match",
    [
        (
            (1.5,),
            ".positions must be None, an int or a sequence of distinct ints; got 1.5",
        ),
        (
            (1, 1),
            ".positions must be None, an int or a sequence of distinct ints; got [1]",
        ),
        (
            ("1",),
            ".positions must be None, an int or a sequence of distinct ints; got '1'",
        ),
    ],
)
def test_every_technique_refuses_bad_declared_positions(model, tokens, technique, positions, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        TECHNIQUES[technique](model, tokens, _Declares(positions))


# -- the contract's pieces -------------------------------------------------------------------
def test_positioned_metrics_are_recognised_by_protocol_and_declaration():
    m = PositionMetric(lambda lg: lg.mean(), positions=(0, -1))
    assert isinstance(m, PositionedMetric)
    assert declared_positions(m) == (0, -1)
    assert declared_positions(lambda lg: lg.mean()) is None
    # positions=None or no callable score: a plain metric
    assert declared_positions(_Declares(None)) is None
    assert check_metric(m) is m
    assert list(named_metrics({"a": m, "b": sum})) == ["a", "b"]
    with pytest.raises(ValueError, match=re.escape("metric 'b' must be a callable")):
        named_metrics({"a": m, "b": 3})
    with pytest.raises(ValueError, match="metrics is an empty mapping"):
        named_metrics({})


def test_call_metric_picks_the_declared_positions_in_declared_order():
    logits = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    m = PositionMetric(lambda lg: lg[:, :, 0], positions=(-1, 1))
    torch.testing.assert_close(call_metric(m, logits), logits[:, [4, 1], 0])
    # logits computed at some positions only: the metric's are picked out of them
    sel = logits[:, [1, 2, 4]]
    torch.testing.assert_close(call_metric(m, sel, [1, 2, 4], n=5), logits[:, [4, 1], 0])
    with pytest.raises(ValueError, match=re.escape("reads positions [4] (of [-1, 1])")):
        call_metric(m, logits[:, [1]], [1], n=5)
    with pytest.raises(ValueError, match="a plain metric, which reads the logits of every"):
        call_metric(lambda lg: lg.mean(), sel, [1, 2, 4], n=5)
    # the caller chooses the position (the lens): score() of what it is given
    torch.testing.assert_close(call_metric(m, sel[:, :1], own_positions=False), sel[:, :1, 0])


def test_row_mean_weights_batches_by_rows_and_refuses_malformed_values():
    acc = RowMean("m")
    acc.add(torch.tensor(2.0), 3)
    acc.add(torch.tensor([[0.0, 2.0]]), 1)  # per prompt, the rest averaged
    assert (acc.value, acc.n) == (pytest.approx(7 / 4), 4)
    assert np.isnan(RowMean().value)
    with pytest.raises(ValueError, match=re.escape("got shape (2,) for a batch of 3 (here)")):
        RowMean("m").add(torch.ones(2), 3, "here")
    with pytest.raises(ValueError, match="returned non-finite values"):
        RowMean("m").add(torch.tensor(float("inf")), 1)


@pytest.mark.parametrize(
    "positions,want",
    [
        (None, None),
        (1, (1,)),
        (-1, (-1,)),
        ([0, -1], (0, -1)),
        ((2,), (2,)),
        (np.int64(3), (3,)),
        ([np.int32(1)], (1,)),
        (torch.tensor(2), (2,)),
        (range(2), (0, 1)),
    ],
)
def test_check_positions_accepts_ints_and_sequences_of_distinct_ints(positions, want):
    assert check_positions(positions) == want


@pytest.mark.parametrize(
    "positions,shown",
    [
        (1.5, "got 1.5"),
        ([1.5], "got 1.5 in [1.5]"),
        (True, "got True"),
        ([True], "got True in [True]"),
        ("1", "got '1'"),
        ([[1]], "got [1] in [[1]]"),
        ([1, 1], "got [1] more than once in [1, 1]"),
        (torch.tensor([1.0]), "got tensor(1.)"),
    ],
)
def test_check_positions_refuses_everything_else(positions, shown):
    with pytest.raises(ValueError, match=re.escape("positions must be None, an int or a sequence")):
        check_positions(positions)
    with pytest.raises(ValueError, match=re.escape(shown)):
        check_positions(positions)
    with pytest.raises(ValueError, match="at least one position"):
        check_positions([])


def test_resolve_positions_checks_range_and_aliases():
    assert resolve_positions([0, -1], 4) == [0, 3]
    assert resolve_positions(None, 4) is None
    with pytest.raises(
        ValueError, match=re.escape("position out of range at x: 4; sequences have")
    ):
        resolve_positions(4, 4, where="x")
    with pytest.raises(ValueError, match=re.escape("name the same position twice")):
        resolve_positions([3, -1], 4)


# -- the one rule, in every technique that takes positions ------------------------------------
def test_one_position_rule_everywhere(model, tokens):
    # a bare int means one position, everywhere
    one = collect_stats(model, tokens, ["mlp0"], positions=1, progress=False)["mlp0"]
    lst = collect_stats(model, tokens, ["mlp0"], positions=[1], progress=False)["mlp0"]
    assert one.n == lst.n == 6
    assert torch.equal(one.mean, lst.mean)
    groups = TokenGroups({"neg": range(10)}, d_vocab=V)
    calls = {
        "collect_stats": lambda p: collect_stats(model, tokens, ["mlp0"], positions=p),
        "fit_pcp": lambda p: fit_pcp(model, tokens, "mlp0", 1, positions=p, progress=False),
        "GroupMetric": lambda p: GroupMetric(groups, "neg", positions=p),
        "PositionMetric": lambda p: PositionMetric(lambda lg: lg.mean(), positions=p),
        "ablation_sweep": lambda p: ablation_sweep(
            model, tokens, lambda lg: lg.mean(), ["mlp0"], method="zero", positions=p
        ),
        "group_lens": lambda p: group_lens(model, tokens, groups, positions=p, progress=False),
        "causal_patching": lambda p: causal_patching(
            model, tokens, tokens, lambda lg: lg.mean(), ["mlp0"], positions=p, progress=False
        ),
    }
    for name, call in calls.items():
        for bad, shown in [([1.5], "got 1.5 in [1.5]"), ([1, 1], "got [1] more than once")]:
            with pytest.raises(ValueError, match=re.escape(shown)):
                call(bad)
            assert name  # for the traceback


def test_tables_share_one_vocabulary(model, tokens):
    groups = TokenGroups({"neg": range(10)}, d_vocab=V)
    metric = GroupMetric(groups, "neg", k=5)
    tables = {
        "ablation": ablation_sweep(
            model, tokens, {"neg": metric}, ["mlp0"], method="zero", progress=False
        ),
        "lens": group_lens(model, tokens, {"neg": metric}, sites=["mlp0"], progress=False),
        "patching": causal_patching(
            model, tokens, _toks(6, 4, 1), metric, ["mlp0"], progress=False
        ),
    }
    for name, df in tables.items():
        vocab = [c for c in df.columns if c in COLUMNS]
        assert vocab == [c for c in COLUMNS if c in vocab], name  # in the one order
        assert {"site", "paper_name", "layer", "kind", "head", "value"} <= set(df.columns), name
        assert str(df["layer"].dtype) == str(df["head"].dtype) == "Int64", name
        assert "mlp0" in set(df["site"]), name
    assert list(tidy_table([{"value": 1, "x": 2, "site": "a"}]).columns) == ["site", "value", "x"]
    assert isinstance(tables["lens"], pd.DataFrame)


def test_row_mean_keeps_rows_only_while_every_batch_gives_them():
    from pcp_lens.scoring import RowMean

    acc = RowMean()
    acc.add(torch.tensor([1.0, 2.0]), 2)
    acc.add(torch.tensor([[3.0, 5.0]]), 1)  # one prompt, two positions: its mean
    assert acc.per_row.tolist() == [1.0, 2.0, 4.0]
    acc.add(torch.tensor(7.0), 3)  # a batch mean cannot be split into prompts
    assert acc.per_row is None
    with pytest.raises(ValueError, match="per_prompt"):
        acc.pair_columns()


def test_per_prompt_gives_each_prompts_value_for_mean_and_group_metrics():
    from pcp_lens import GroupMetric, PositionMetric, TokenGroups
    from pcp_lens.scoring import per_prompt

    logits = torch.randn(5, 3, 8, generator=torch.Generator().manual_seed(0))
    g = TokenGroups({"a": [0, 1], "b": [5]}, d_vocab=8)
    for m in [
        GroupMetric(g, "a", stat="prob", positions=(-1, 0)),
        PositionMetric(lambda lg: lg[:, 0, 2].mean(), positions=(1,)),
        lambda lg: lg[:, -1, 4].mean(),
    ]:
        rows = per_prompt(m)
        got = call_metric(rows, logits).reshape(5, -1).mean(1)
        want = torch.stack([torch.as_tensor(call_metric(m, logits[i : i + 1])) for i in range(5)])
        assert torch.allclose(got, want.reshape(5))
        assert declared_positions(rows) == declared_positions(m)
