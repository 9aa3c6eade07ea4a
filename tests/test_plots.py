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
