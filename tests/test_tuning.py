"""Tuning and sweeping PCP scales: batched scores, Optuna search, grids, validation loss."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
import torch

from pcp_lens.groups import GroupMetric, PositionMetric, TokenGroups
from pcp_lens.pcp import PCPReplacement, SitePCP, fit_pcp, least_squares_scales
from pcp_lens.tuning import TuneResult, score_inputs, sweep, tune, validation_loss


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _toks(n: int, p: int, seed: int) -> torch.Tensor:
    return torch.randint(1, 50, (n, p), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def sets() -> dict[str, torch.Tensor]:
    # sets of different lengths exercise the right-padded single batch
    return {
        "pp": _toks(10, 2, 1),
        "pt": _toks(10, 2, 2),
        "nn": _toks(8, 3, 3),
        "st": _toks(6, 4, 4),
    }


@pytest.fixture(scope="module")
def groups() -> TokenGroups:
    return TokenGroups({"neg": list(range(0, 15)), "pos": list(range(15, 30))}, d_vocab=50)


@pytest.fixture(scope="module")
def neg(groups) -> GroupMetric:
    return GroupMetric(groups, "neg", k=5)


@pytest.fixture(scope="module")
def pcp(model, sets) -> PCPReplacement:
    rows = [r for t in sets.values() for r in t]
    return fit_pcp(model, rows, ["mlp0", "mlp2"], 2, progress=False)


def _reference_scores(model, sets, metric, rep=None):
    hooks = [] if rep is None else rep.hooks(model)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return {k: float(metric(model(t))) for k, t in sets.items()}


@pytest.mark.parametrize("edited", [False, True])
def test_batched_scores_equal_plain_forwards(model, sets, neg, pcp, edited):
    rep = pcp if edited else None
    got = score_inputs(model, sets, neg, rep)
    want = _reference_scores(model, sets, neg, rep)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-6)


def test_several_metrics_and_positions(model, sets, groups, pcp):
    metrics = {
        "neg": GroupMetric(groups, "neg", k=5, positions=(-1, 0)),
        "pos_prob": GroupMetric(groups, "pos", stat="prob", positions=(1,)),
    }
    got = score_inputs(model, sets, metrics, pcp)
    assert set(got) == {(s, m) for s in sets for m in metrics}
    with torch.no_grad(), model.hooks(fwd_hooks=pcp.hooks(model)):
        for s, t in sets.items():
            logits = model(t)
            for name, m in metrics.items():
                assert got[(s, name)] == pytest.approx(float(m(logits)), abs=1e-6)


def test_tune_first_trial_is_least_squares_and_improves(model, sets, neg, pcp):
    rows = [r for t in sets.values() for r in t]
    ls = least_squares_scales(model, pcp, rows, progress=False)
    res = tune(model, pcp, sets, neg, n_trials=12, progress=False, seed=3)
    assert isinstance(res, TuneResult) and len(res.study.trials) == 12
    first = res.study.trials[0].params
    for site in ("mlp0", "mlp2"):
        for i, v in enumerate(ls.part(site).scales.tolist()):
            assert first[f"{site}:{i}"] == pytest.approx(v)
    assert res.study.best_value <= res.study.trials[0].value
    assert res.target == pytest.approx(score_inputs(model, sets, neg))
    # the returned replacement reproduces the best trial's scores
    assert score_inputs(model, sets, neg, res.replacement) == pytest.approx(res.scores, abs=1e-6)
    loss = sum((res.scores[k] - res.target[k]) ** 2 for k in sets) / len(sets)
    assert res.study.best_value == pytest.approx(loss)
    # seeded: the same search again gives the same best scales
    again = tune(model, pcp, sets, neg, n_trials=12, progress=False, seed=3)
    assert again.replacement.equal(res.replacement)


def test_tune_recovers_planted_scale(model, sets, groups):
    prob = GroupMetric(groups, "neg", stat="prob")
    u = torch.eye(16, dtype=torch.float64)[3:4]
    start = PCPReplacement.from_parts(model, [SitePCP("mlp1", u, [1.0])])
    target = score_inputs(model, sets, prob, start.with_scales({"mlp1": [1.3]}))
    res = tune(
        model,
        start,
        sets,
        prob,
        target=target,
        n_trials=30,
        bounds=(0.0, 2.0),
        initial="current",
        progress=False,
    )
    assert res.replacement.part("mlp1").scales.item() == pytest.approx(1.3, abs=0.05)


def test_tune_paper_objective_factor_space_and_partial_target(model, sets, neg, pcp):
    target = {"pt": 0.0, "pp": 0.4}
    res = tune(
        model,
        pcp,
        sets,
        neg,
        target=target,
        sites="mlp2",
        objective="paper_sum",
        space="factor",
        bounds={"mlp2": [(0.0, 1.0), (0.0, 2.0)]},
        n_trials=6,
        initial=None,
        progress=False,
    )
    assert res.target == target
    t = res.study.best_trial
    scores = dict(zip(list(sets), t.user_attrs["scores"], strict=True))
    assert t.value == pytest.approx(sum((1000 * (scores[k] - v)) ** 2 for k, v in target.items()))
    # mlp0 untouched; mlp2's α = s·f² with s the starting sign
    assert torch.equal(res.replacement.part("mlp0").scales, pcp.part("mlp0").scales)
    s = pcp.part("mlp2").signs
    f = torch.tensor([t.params["mlp2:0"], t.params["mlp2:1"]], dtype=torch.float64)
    assert torch.allclose(res.replacement.part("mlp2").scales, s * f * f)
    assert set(t.params) == {"mlp2:0", "mlp2:1"}


def test_tune_clips_initial_into_bounds(model, sets, neg, pcp):
    with pytest.warns(UserWarning, match="clipped"):
        res = tune(
            model,
            pcp,
            sets,
            neg,
            n_trials=1,
            bounds=(10.0, 11.0),
            initial="current",
            progress=False,
        )
    assert all(10.0 <= v <= 11.0 for v in res.study.trials[0].params.values())


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(target={"xx": 0.0}), "target: unknown key 'xx'"),
        (dict(target={"pt": float("nan")}), "target\\['pt'\\] must be a finite number"),
        (dict(n_trials=0), "n_trials must be an int >= 1"),
        (dict(objective="sum"), "objective must be 'mse', 'paper_sum' or a callable"),
        (dict(space="beta"), "space must be 'alpha' or 'factor'"),
        (dict(bounds=(1.0, 0.0)), "low < high"),
        (dict(bounds={"mlp0": [(0, 1)] * 3}), "one \\(low, high\\) pair or 2 pairs"),
        (dict(bounds={"mlp1": (0, 1)}), "site 'mlp1' is not replaced"),
        (dict(space="factor", bounds=(-1.0, 1.0)), "low must be >= 0"),
        (dict(initial="random"), "initial must be"),
        (dict(sites="attn1"), "site 'attn1' is not replaced"),
        (dict(num_threads=0), "num_threads must be None or an int >= 1"),
        (dict(inputs={}), "inputs must be a non-empty mapping"),
        (
            dict(inputs={"a": _toks(2, 1, 0)}, metric_pos=(-2,)),
            "position out of range at input set 'a': -2",
        ),
        (dict(metric="neg"), "metric must be a callable logits"),
    ],
)
def test_bad_tune_arguments(model, sets, groups, neg, pcp, hygiene, kw, match):
    snap = hygiene.snapshot(model)
    kw = dict(kw)
    inputs = kw.pop("inputs", sets)
    metric = kw.pop("metric", neg)
    if "metric_pos" in kw:
        metric = GroupMetric(groups, "neg", k=5, positions=kw.pop("metric_pos"))
    with pytest.raises(ValueError, match=match):
        tune(model, pcp, inputs, metric, n_trials=kw.pop("n_trials", 2), progress=False, **kw)
    hygiene.check(model, snap)
    assert torch.get_num_threads() == 1


class _NanWhenEdited:
    """Finite on the unedited model (the default target), nan in every trial."""

    positions = (-1,)

    def __init__(self) -> None:
        self.calls = 0

    def score(self, selected):
        self.calls += 1
        return selected[:, 0, 0].mean() * (float("nan") if self.calls > 1 else 1.0)


def test_nan_metric_is_named_not_left_to_optuna(model, sets, pcp, hygiene):
    snap = hygiene.snapshot(model)
    nan = PositionMetric(lambda lg: lg[:, 0, 0].mean() * float("nan"), positions=(-1,))
    with pytest.raises(
        ValueError,
        match=re.escape("metric returned non-finite values (nan or inf) (input set 'pp'); a"),
    ):
        tune(model, pcp, sets, nan, n_trials=2, progress=False)
    # nan only on edited models: the first trial fails with the same message, not Optuna's
    with pytest.raises(ValueError, match=re.escape("metric 'neg' returned non-finite values")):
        tune(model, pcp, sets, {"neg": _NanWhenEdited()}, n_trials=2, progress=False)
    hygiene.check(model, snap)


def test_tuning_accepts_every_metric_the_others_do(model, sets, pcp):
    """Plain callables and per-prompt values, as in ablation, the lens and patching."""
    plain = {"last": lambda lg: lg[:, -1, 3], "mean": lambda lg: lg[:, -1, 3].mean()}
    got = score_inputs(model, sets, plain, pcp)
    with torch.no_grad(), model.hooks(fwd_hooks=pcp.hooks(model)):
        for name, t in sets.items():
            want = float(model(t)[:, -1, 3].mean())
            assert got[(name, "last")] == pytest.approx(want, abs=1e-5)
            assert got[(name, "mean")] == pytest.approx(want, abs=1e-5)
    res = tune(model, pcp, sets, plain["mean"], n_trials=2, progress=False)
    assert sorted(res.scores) == sorted(sets)


@pytest.mark.parametrize("space", ["alpha", "factor"])
def test_any_objective_runs_the_same_search_as_the_logit_path(model, sets, neg, pcp, space):
    """A callable computing the logit path's loss gives the same trials and best scales."""
    kw: dict[str, Any] = dict(n_trials=10, seed=5, space=space, progress=False)
    ref = tune(model, pcp, sets, neg, **kw)
    calls = []

    def mse(rep):
        calls.append(rep)
        s = score_inputs(model, sets, neg, rep)
        return sum((s[k] - t) ** 2 for k, t in ref.target.items()) / len(ref.target)

    # inputs given: the same least-squares first trial ("auto")
    res = tune(model, pcp, sets, objective=mse, **kw)
    assert [t.params for t in res.study.trials] == [t.params for t in ref.study.trials]
    assert [t.value for t in res.study.trials] == pytest.approx(
        [t.value for t in ref.study.trials], abs=1e-12
    )
    assert res.replacement.equal(ref.replacement)
    assert res.target == {} and res.scores == {"objective": res.study.best_value}
    assert len(calls) == 10  # once per trial; the best one is not re-scored


def test_user_objective_and_scores(model, sets, pcp, hygiene):
    snap = hygiene.snapshot(model)

    def pull(rep):  # pull mlp2's first scale to 0.3, any other scale free
        return (float(rep.part("mlp2").scales[0]) - 0.3) ** 2

    res = tune(model, pcp, objective=pull, sites="mlp2", bounds=(-2.0, 2.0), n_trials=25,
               progress=False)
    first = res.study.trials[0].params  # no inputs: "auto" starts from the current scales
    assert first["mlp2:0"] == pytest.approx(float(pcp.part("mlp2").scales[0]))
    assert res.scores["objective"] < 0.01
    assert res.scores["objective"] <= res.study.trials[0].values[0]
    assert torch.equal(res.replacement.part("mlp0").scales, pcp.part("mlp0").scales)
    df = sweep(model, pcp, {"mlp2": [0.0, 1.0]}, scores={"pull": lambda r: 9.0 if r is None
                                                         else pull(r)})
    assert list(df.columns) == ["setting", "mlp2", "metric", "value"]
    assert df.value.tolist() == pytest.approx([9.0, 0.09, pull(pcp)])
    hygiene.check(model, snap)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(objective=3), "objective must be 'mse', 'paper_sum' or a callable"),
        (dict(objective=lambda r: "low"), "objective must return a finite float, got str 'low'"),
        (dict(objective=lambda r: float("nan")), "objective must return a finite float, got nan"),
        (dict(objective=lambda r: torch.ones(2)), "objective must return a finite float"),
        (dict(objective=lambda r: True), "objective must return a finite float, got True"),
        (dict(objective=lambda r: 0.0, metric="M"), "metric and target are not used"),
        (dict(objective=lambda r: 0.0, target={"pp": 0.0}), "metric and target are not used"),
        (dict(objective="mse"), "pass inputs and metric, or a callable objective"),
        (dict(objective=lambda r: 0.0, initial="least_squares"), "pass inputs"),
    ],
)
def test_bad_objectives(model, neg, pcp, hygiene, kw, match):
    snap = hygiene.snapshot(model)
    if kw.get("metric") == "M":
        kw["metric"] = neg
    with pytest.raises(ValueError, match=re.escape(match)):
        tune(model, pcp, n_trials=2, progress=False, **kw)
    hygiene.check(model, snap)


def test_bad_sweep_scores(model, sets, neg, pcp):
    grid = {"mlp0": [1.0]}
    with pytest.raises(ValueError, match="not both"):
        sweep(model, pcp, grid, sets, neg, scores={"a": lambda r: 0.0})
    with pytest.raises(ValueError, match="scores must be a non-empty mapping"):
        sweep(model, pcp, grid, scores={"a": 1.0})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="pass inputs and metric, or scores"):
        sweep(model, pcp, grid, sets)
    with pytest.raises(ValueError, match=re.escape("scores['a'] must return a finite float")):
        sweep(model, pcp, grid, scores={"a": lambda r: math.inf})


def test_sweep_table(model, sets, neg, pcp):
    val = _toks(4, 8, 9)
    df = sweep(
        model,
        pcp,
        {"mlp0": [1.0, (-1.2, 0.5)], ("mlp2", 1): [0.0, 2.0]},
        sets,
        neg,
        val_tokens=val,
    )
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["setting", "mlp0", "mlp2:1", "input_set", "metric", "value"]
    settings = list(df.setting.unique())
    assert settings[0] == "unedited" and len(settings) == 1 + 2 * 2
    assert "mlp0=(-1.2, 0.5), mlp2:1=2" in settings
    table = df.pivot(index=["input_set", "metric"], columns="setting", values="value")
    assert table.shape == (len(sets) + 1, 5)
    # the unedited column is the plain model; relative (1, 1) with mlp2:1 × 0 is that edit
    plain = _reference_scores(model, sets, neg)
    for k, v in plain.items():
        assert table.loc[(k, "neg"), "unedited"] == pytest.approx(v, abs=1e-6)
    assert table.loc[("validation", "loss"), "unedited"] == pytest.approx(
        validation_loss(model, val)
    )
    edited = pcp.scale("mlp2", 0.0, components=1)
    want = _reference_scores(model, sets, neg, edited)
    for k, v in want.items():
        assert table.loc[(k, "neg"), "mlp0=1, mlp2:1=0"] == pytest.approx(v, abs=1e-6)
    assert table.loc[("validation", "loss"), "mlp0=1, mlp2:1=0"] == pytest.approx(
        validation_loss(model, val, edited)
    )
    # absolute factors set α
    ab = sweep(model, pcp, {("mlp0", 0): [0.5]}, sets, neg, relative=False, unedited=False)
    want = _reference_scores(model, sets, neg, pcp.scale("mlp0", 0.5, relative=False, components=0))
    assert dict(zip(ab.input_set, ab.value, strict=True)) == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ({}, "grid must be a non-empty mapping"),
        ({"mlp0": [(1.0, 2.0, 3.0)]}, "sequences of 2"),
        ({"mlp0": [1.0], ("mlp0", 1): [2.0]}, "component 1 of site 'mlp0' appears twice"),
        ({("mlp0", 5): [1.0]}, "component must be an int in 0..1"),
        ({"attn0": [1.0]}, "site 'attn0' is not replaced"),
        ({"mlp0": []}, "at least one value"),
        ({"mlp0": [float("inf")]}, "finite numbers"),
    ],
)
def test_bad_grids(model, sets, neg, pcp, hygiene, grid, match):
    snap = hygiene.snapshot(model)
    with pytest.raises(ValueError, match=match):
        sweep(model, pcp, grid, sets, neg)
    hygiene.check(model, snap)


@torch.no_grad()
def test_validation_loss(model, pcp):
    toks = _toks(3, 7, 5)
    assert validation_loss(model, toks) == pytest.approx(float(model(toks, return_type="loss")))
    ragged = [toks[0], toks[1, :4], toks[2, :2]]
    per = [float(model(t[None], return_type="loss")) * (len(t) - 1) for t in ragged]
    assert validation_loss(model, ragged, batch_size=2) == pytest.approx(sum(per) / (6 + 3 + 1))
    with model.hooks(fwd_hooks=pcp.hooks(model)):
        edited = float(model(toks, return_type="loss"))
    assert validation_loss(model, toks, pcp) == pytest.approx(edited)
    assert math.isfinite(edited)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        validation_loss(model, toks[:, :1])
