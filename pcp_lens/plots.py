"""Figures for pcp_lens tables (matplotlib, no global pyplot state)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["heatmap", "scatter"]


def _label(key: Any) -> str:
    if isinstance(key, tuple):
        return " ".join(str(k) for k in key)
    return str(key)


def heatmap(
    table: pd.DataFrame,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool = True,
    fmt: str = ".2f",
) -> Figure:
    """Draw a wide table (rows × columns of numbers) as an annotated heatmap.

    Meant for :func:`pcp_lens.lens.lens_table`, :func:`pcp_lens.ablation.ablation_table` and
    patching tables: rows top to bottom in table order, multi-level column labels joined with
    spaces, missing cells left blank.

    Args:
        table: a wide DataFrame of numbers (pivot a tidy table first).
        ax: draw into these axes; by default a new figure sized to the table.
        title: axes title.
        cmap: matplotlib colormap name.
        vmin: lower end of the colour scale (default: the table's minimum).
        vmax: upper end of the colour scale (default: the table's maximum).
        annotate: write each value in its cell.
        fmt: format of the annotations.

    Returns:
        The matplotlib ``Figure`` (save it with ``fig.savefig(path)``).

    Examples:
        >>> t = pd.DataFrame({"neg": [0.1, 0.9], "pos": [0.8, 0.0]}, index=["L1 mlp", "full"])
        >>> fig = heatmap(t, title="lens")
        >>> len(fig.axes[0].texts)
        4
    """
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise ValueError("table must be a non-empty pandas DataFrame (pivot a tidy table first)")
    try:
        values = table.to_numpy(dtype=float)
    except (TypeError, ValueError):
        raise ValueError(
            "table must hold numbers only; pivot the tidy table first (e.g. with lens_table or "
            "ablation_table)"
        ) from None
    n_rows, n_cols = values.shape
    if ax is None:
        fig = Figure(figsize=(1.0 + 0.9 * n_cols, 0.8 + 0.32 * n_rows), layout="constrained")
        ax = fig.add_subplot()
    else:
        parent = ax.figure  # a Figure, or a SubFigure whose .figure is the root Figure
        fig = parent if isinstance(parent, Figure) else parent.figure  # type: ignore[assignment]
    masked = np.ma.masked_invalid(values)
    im = ax.imshow(masked, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(n_cols), [_label(c) for c in table.columns], rotation=45, ha="right")
    ax.set_yticks(range(n_rows), [_label(r) for r in table.index])
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax)
    if annotate:
        lo, hi = im.get_clim()
        mid = (lo + hi) / 2
        for i in range(n_rows):
            for j in range(n_cols):
                v = values[i, j]
                if np.isfinite(v):
                    ax.text(
                        j,
                        i,
                        format(v, fmt),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="black" if v > mid else "white",
                    )
    return fig


def scatter(
    points: dict[str, Any],
    *,
    ax: Axes | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Figure:
    """Scatter named groups of 2-d points, one colour per group (e.g. the paper's Fig. 3).

    Args:
        points: ``{group name: array [n, 2]}``.
        ax: draw into these axes; by default a new figure.
        title: axes title.
        xlabel: x-axis label.
        ylabel: y-axis label.

    Returns:
        The matplotlib ``Figure``.

    Examples:
        >>> fig = scatter({"pp": np.zeros((3, 2)), "pt": np.ones((3, 2))}, title="demo")
        >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        ['pp', 'pt']
    """
    if ax is None:
        fig = Figure(figsize=(5.5, 4.5))
        ax = fig.add_subplot()
    else:
        fig = ax.get_figure()  # type: ignore[assignment]
    for name, xy in points.items():
        arr = np.asarray(xy, dtype=float)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"points[{name!r}] must have shape [n, 2], got {arr.shape}")
        ax.scatter(arr[:, 0], arr[:, 1], s=12, alpha=0.7, label=name)
    ax.legend(fontsize=8, markerscale=1.5)
    if title:
        ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    return fig  # type: ignore[return-value]
