"""Tests for pcp_lens.plots."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from matplotlib.figure import Figure

from pcp_lens.plots import heatmap


def table():
    cols = pd.MultiIndex.from_tuples([(0, "neg"), (0, "pos"), (1, "neg")])
    return pd.DataFrame(
        [[0.1, 0.9, 0.5], [0.0, math.nan, 1.0]], index=["L1 mlp", "full model"], columns=cols
    )


def test_heatmap_returns_annotated_figure(tmp_path):
    fig = heatmap(table(), title="lens", vmin=0, vmax=1)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_title() == "lens"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0 neg", "0 pos", "1 neg"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L1 mlp", "full model"]
    assert sorted(t.get_text() for t in ax.texts) == ["0.00", "0.10", "0.50", "0.90", "1.00"]
    fig.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0


def test_heatmap_into_given_axes():
    fig = Figure()
    ax = fig.add_subplot()
    assert heatmap(table(), ax=ax, annotate=False) is fig
    assert len(ax.texts) == 0


@pytest.mark.parametrize("bad", [pd.DataFrame(), pd.DataFrame({"site": ["a"], "value": ["x"]})])
def test_heatmap_bad_input(bad):
    with pytest.raises(ValueError, match="table must"):
        heatmap(bad)


# -- one plot per table, each drawn from a real table of a tiny model -------------------------
@pytest.fixture(scope="module")
def setup():
    import torch

    from pcp_lens import GroupMetric, TokenGroups
    from pcp_lens.testing import tiny_model

    model = tiny_model(n_layers=2, d_model=16, n_heads=2, d_vocab=50, seed=0)
    groups = TokenGroups({"neg": range(10), "pos": range(10, 20)}, d_vocab=50)
    g = torch.Generator().manual_seed(0)
    sets = {k: torch.randint(0, 50, (8, 3), generator=g) for k in ("pp", "pt", "nn")}
    neg = GroupMetric(groups, "neg", k=5, positions=(-1,))
    return model, groups, sets, neg


def labels(ticks) -> list[str]:
    return [t.get_text() for t in ticks]


def panels(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_label() == "panel"]


def test_plot_patching_per_position_both_directions(setup, tmp_path):
    from pcp_lens.patching import causal_patching
    from pcp_lens.plots import plot_patching

    model, _, sets, neg = setup
    df = causal_patching(model, sets["pp"], sets["pt"], neg, direction="both", progress=False)
    fig = plot_patching(df)
    ps = panels(fig)
    assert [ax.get_title() for ax in ps] == [
        "attn, clean → corrupted",
        "mlp, clean → corrupted",
        "attn, corrupted → clean",
        "mlp, corrupted → clean",
    ]
    for ax in ps:  # layer × position, 1-based layer names
        assert labels(ax.get_yticklabels()) == ["L1", "L2"]
        assert labels(ax.get_xticklabels()) == ["0", "1", "2"]
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("position", "layer")
        assert ax.images[0].get_array().shape == (2, 3)
    # the drawn cells are the table's effects: mlp, clean -> corrupted, layer 2, position 1
    row = df[(df.direction == "clean_to_corrupted") & (df.kind == "mlp") & (df.layer == 1)
             & (df.position == 1)]
    assert ps[1].images[0].get_array()[1, 1] == pytest.approx(float(row.effect.iloc[0]))
    # one colour scale for all panels, centred on 0
    lims = {ax.images[0].get_clim() for ax in ps}
    assert len(lims) == 1 and next(iter(lims))[0] == -next(iter(lims))[1]
    fig.savefig(tmp_path / "p.png")


def test_plot_patching_whole_modules_and_heads(setup):
    from pcp_lens.patching import causal_patching
    from pcp_lens.plots import plot_patching

    model, _, sets, neg = setup
    df = causal_patching(model, sets["pp"], sets["pt"], neg,
                         sites=["attn0", "mlp0", "attn1", "mlp1", "attn1.h0", "attn1.h1"],
                         positions="all", progress=False)
    ps = panels(plot_patching(df, value="value"))
    assert [ax.get_title() for ax in ps] == ["clean → corrupted", "heads, clean → corrupted"]
    assert labels(ps[0].get_xticklabels()) == ["attn", "mlp"]
    assert labels(ps[0].get_yticklabels()) == ["L1", "L2"]
    assert labels(ps[1].get_yticklabels()) == ["L2 att0", "L2 att1"]
    with pytest.raises(ValueError, match="kinds \\['resid_pre'\\] are not in the table"):
        plot_patching(df, kinds=["resid_pre"])
    with pytest.raises(ValueError, match="value must be"):
        plot_patching(df, value="nope")


def test_plot_lens(setup):
    from pcp_lens.lens import group_lens
    from pcp_lens.plots import plot_lens

    model, groups, sets, _ = setup
    df = group_lens(model, sets["pt"], groups, positions=[1, 2], progress=False)
    fig = plot_lens(df, vmin=0, vmax=1)
    ps = panels(fig)
    assert [ax.get_title() for ax in ps] == ["neg", "pos"]
    rows = labels(ps[0].get_yticklabels())
    assert rows[:4] == ["embd", "L1 attn", "L1 att0", "L1 att1"] and rows[-1] == "full model"
    assert labels(ps[0].get_xticklabels()) == ["1", "2"]
    assert ps[0].get_xlabel() == "position" and ps[0].get_ylabel() == "module"
    assert ps[0].images[0].get_array().shape == (len(rows), 2)
    v = df[(df.paper_name == "L1 mlp") & (df.metric == "pos") & (df.position == 2)].value
    assert ps[1].images[0].get_array()[rows.index("L1 mlp"), 1] == pytest.approx(float(v.iloc[0]))
    short = panels(plot_lens(df, names="short"))[0]
    assert labels(short.get_yticklabels())[1:3] == ["attn0", "attn0.h0"]
    with pytest.raises(ValueError, match="lacks columns"):
        plot_lens(df.drop(columns="position"))
    if "module" in df.columns:  # the legacy name of "site" is not needed
        assert panels(plot_lens(df.drop(columns="module"), names="short"))


def test_plot_ablation(setup):
    from pcp_lens.ablation import ablation_sweep
    from pcp_lens.plots import plot_ablation

    model, _, sets, neg = setup
    df = ablation_sweep(model, {"pt": sets["pt"], "nn": sets["nn"]}, {"neg": neg},
                        method="zero", progress=False)
    ax = plot_ablation(df).axes[0]
    assert labels(ax.get_yticklabels()) == ["L1 attn", "L1 mlp", "L2 attn", "L2 mlp", "Unchanged"]
    assert labels(ax.get_xticklabels()) == ["pt", "nn"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == (
        "input set", "ablated site", "zero ablation")
    assert ax.images[0].get_array().shape == (5, 2)
    layer = plot_ablation(df, layout="layer").axes[0]
    assert labels(layer.get_yticklabels()) == ["1", "2", "Unchanged"]
    assert labels(layer.get_xticklabels()) == ["pt attn", "pt mlp", "nn attn", "nn mlp"]
    assert layer.get_xlabel() == "input set, kind" and layer.get_ylabel() == "layer"
    with pytest.raises(ValueError, match="layout must be"):
        plot_ablation(df, layout="grid")
    if "ablation" in df.columns:  # the legacy name of "site" is not needed
        assert plot_ablation(df.drop(columns="ablation")).axes


@pytest.fixture(scope="module")
def tuned(setup):
    import torch

    from pcp_lens.pcp import fit_pcp
    from pcp_lens.tuning import tune

    model, _, sets, neg = setup
    pcp = fit_pcp(model, torch.cat(list(sets.values())), "mlp0", 2, progress=False)
    return tune(model, pcp, sets, neg, n_trials=6, seed=0, progress=False)


def test_plot_factor_sweep_numeric_with_validation(setup, tuned):
    import torch

    from pcp_lens.plots import plot_factor_sweep
    from pcp_lens.tuning import sweep

    model, _, sets, neg = setup
    df = sweep(model, tuned.replacement, {"mlp0": [0.0, 0.5, 1.0]}, sets, neg,
               val_tokens=torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(1)))
    fig = plot_factor_sweep(df)
    ax, vax = fig.axes
    assert ax.get_xlabel() == "mlp0 factor" and vax.get_ylabel() == "validation loss"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pp", "pt", "nn"]
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() != ":"]
    assert [list(ln.get_xdata()) for ln in solid] == [[0.0, 0.5, 1.0]] * 3
    pt = df[(df.input_set == "pt") & (df.setting != "unedited")].value.tolist()
    assert list(solid[1].get_ydata()) == pytest.approx(pt)
    dotted = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert len(dotted) == 3  # the unedited model's score per set


def test_plot_factor_sweep_categorical(setup, tuned):
    from pcp_lens.plots import plot_factor_sweep
    from pcp_lens.tuning import sweep

    model, _, sets, neg = setup
    df = sweep(model, tuned.replacement, {"mlp0": [(1.0, 1.0), (-1.2, 0.5)]}, sets, neg,
               unedited=False)
    fig = plot_factor_sweep(df, metrics=["neg"])
    assert len(fig.axes) == 1  # no validation panel
    ax = fig.axes[0]
    assert labels(ax.get_xticklabels()) == ["mlp0=(1, 1)", "mlp0=(-1.2, 0.5)"]
    assert ax.get_xlabel() == "setting" and ax.get_ylabel() == "neg"
    with pytest.raises(ValueError, match="metrics \\['pos'\\] are not in the table"):
        plot_factor_sweep(df, metrics=["pos"])


def test_plot_tuning_history(tuned):
    import numpy as np

    from pcp_lens.plots import plot_tuning_history

    fig = plot_tuning_history(tuned, log=False)
    ax, pax = fig.axes
    assert (ax.get_ylabel(), pax.get_xlabel(), pax.get_ylabel()) == (
        "objective", "trial", "parameter value")
    values = [t.value for t in tuned.study.trials]
    assert list(ax.collections[0].get_offsets()[:, 1]) == pytest.approx(values)
    best = ax.get_lines()[0].get_ydata()
    assert list(best) == pytest.approx(list(np.minimum.accumulate(values)))
    assert [t.get_text() for t in pax.get_legend().get_texts()] == ["mlp0:0", "mlp0:1"]
    assert plot_tuning_history(tuned.study).axes[0].get_ylabel() == "objective"
    with pytest.raises(ValueError, match=r"TuneResult or an optuna\.Study"):
        plot_tuning_history(tuned.replacement)


def test_hidden_pca_and_plot(setup):
    from pcp_lens.plots import hidden_pca, plot_hidden_pca

    model, _, sets, _ = setup
    df = hidden_pca(model, sets, "resid_post0", fit_on=["pp", "nn"])
    assert list(df.columns) == ["input_set", "pc1", "pc2"] and len(df) == 24
    assert df.attrs["fit_on"] == ["pp", "nn"]
    # PCA fitted on pp and nn: their projections are centred
    fit = df[df.input_set.isin(["pp", "nn"])]
    assert fit[["pc1", "pc2"]].mean().abs().max() < 1e-9
    ax = plot_hidden_pca(df).axes[0]
    assert ax.get_title() == "hidden state: L1 resid_post, position -1"
    evr = df.attrs["explained_variance_ratio"]
    assert ax.get_xlabel() == f"PC 1 ({evr[0]:.0%} of variance)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pp", "pt", "nn"]
    with pytest.raises(ValueError, match="fit_on names \\['ss'\\]"):
        hidden_pca(model, sets, fit_on=["ss"])
    with pytest.raises(ValueError, match="not a head"):
        hidden_pca(model, sets, "attn0.h1")
    with pytest.raises(ValueError, match=r"position must be in -3\.\.2"):
        hidden_pca(model, sets, position=3)
