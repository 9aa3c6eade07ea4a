"""Figures for pcp_lens tables (matplotlib, no global pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "heatmap",
    "hidden_pca",
    "plot_ablation",
    "plot_factor_sweep",
    "plot_hidden_pca",
    "plot_lens",
    "plot_patching",
    "plot_tuning_history",
    "scan_map",
    "scatter",
]


def _label(key: Any) -> str:
    if isinstance(key, tuple):
        return " ".join(str(k) for k in key)
    return str(key)


def _ink(rgba: Any) -> str:
    """Black on light cells, white on dark ones (by the cell colour's luminance)."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


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
                        color=_ink(im.cmap(im.norm(v))),
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


# -- one call per pcp_lens table -------------------------------------------------------------------
def _check_table(df: Any, columns: Sequence[str], arg: str, made_by: str) -> pd.DataFrame:
    """Raise unless ``df`` is a non-empty DataFrame holding ``columns``."""
    if not isinstance(df, pd.DataFrame) or df.empty:
        raise ValueError(f"{arg} must be a non-empty DataFrame from {made_by}, got {type(df)!r}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{arg} lacks columns {missing}; expected the tidy table of {made_by} "
            f"(columns {list(columns)})"
        )
    return df


def _sel(df: pd.DataFrame, mask: Any) -> pd.DataFrame:
    """``df[mask]``, typed as the DataFrame it is."""
    return cast(pd.DataFrame, df[mask])


def _limits(values: np.ndarray, diverging: bool) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (0.0, 1.0)
    if diverging:
        m = float(np.abs(finite).max()) or 1.0
        return (-m, m)
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _panel(ax: Axes, wide: pd.DataFrame, title: str, xlabel: str, **style: Any) -> None:
    """One labelled heatmap panel of a multi-panel figure (upright column labels)."""
    heatmap(wide, ax=ax, title=title, **style)
    ax.set_label("panel")
    ax.set_xlabel(xlabel)
    for t in ax.get_xticklabels():
        t.set_rotation(0)
        t.set_horizontalalignment("center")


def _position_label(p: Any) -> str:
    return "all" if int(p) == -1 else str(int(p))


def plot_patching(
    df: pd.DataFrame,
    value: str = "effect",
    *,
    kinds: Sequence[str] | None = None,
    cmap: str | None = None,
    annotate: bool | None = None,
    title: str | None = None,
) -> Figure:
    """Draw a :func:`~pcp_lens.patching.causal_patching` table as layer × position grids.

    One panel per (direction, kind): rows are layers in the paper's 1-based names (``L1``...),
    columns token positions; attention heads get their own panel with rows ``L1 att0``, .... A
    table patched with ``positions="all"`` becomes one layer × kind panel per direction (the
    shape of Tab. XII). All panels share one colour scale, centred on 0 for ``"effect"``.

    Args:
        df: the tidy table of :func:`~pcp_lens.patching.causal_patching` (one or both
            directions).
        value: the column to draw: ``"effect"`` (indirect effect) or ``"value"`` (the metric);
            for an :func:`~pcp_lens.attribution.attribution_patching` table also ``"estimate"``.
        kinds: the kinds to draw, in order (default: every kind in the table; ``"heads"`` for
            the attention heads).
        cmap: colormap (default ``"RdBu_r"`` for effects, ``"viridis"`` otherwise).
        annotate: write values in the cells (default: when a panel has at most 150 cells).
        title: figure title.

    Returns:
        The matplotlib ``Figure``; its axes are in (direction, kind) order.

    Examples:
        >>> import torch
        >>> from pcp_lens.patching import causal_patching
        >>> from pcp_lens.testing import tiny_model
        >>> model = tiny_model()
        >>> clean, corrupted = torch.randint(0, 50, (2, 4, 3))
        >>> df = causal_patching(model, clean, corrupted, lambda lg: lg[:, -1, 0].mean(),
        ...                      direction="both", progress=False)
        >>> fig = plot_patching(df)
        >>> titles = [ax.get_title() for ax in fig.axes if ax.get_label() == "panel"]
        >>> len(titles), titles[0], titles[-1]
        (4, 'attn, clean → corrupted', 'mlp, corrupted → clean')
    """
    cols = ("direction", "site", "layer", "kind", "head", "position", "value", "effect")
    df = _check_table(df, cols, "df", "causal_patching")
    allowed = ("effect", "value", "baseline") + (("estimate",) if "estimate" in df.columns else ())
    if value not in allowed:
        raise ValueError(f"value must be one of {list(allowed)}, got {value!r}")
    diverging = value in ("effect", "estimate")  # an attribution_patching estimate is an effect
    cmap = cmap or ("RdBu_r" if diverging else "viridis")
    d = df.assign(_kind=np.where(df["head"].notna(), "heads", df["kind"]))
    present = list(dict.fromkeys(d["_kind"]))
    wanted = present if kinds is None else list(kinds)
    unknown = [k for k in wanted if k not in present]
    if unknown:
        raise ValueError(f"kinds {unknown} are not in the table; it has kinds {present}")
    d = _sel(d, d["_kind"].isin(wanted))
    whole = bool((d["position"] == -1).all())
    directions = list(dict.fromkeys(d["direction"]))
    panels: list[tuple[str, pd.DataFrame, str, str]] = []  # (title, wide, xlabel, ylabel)
    for direction in directions:
        dd = _sel(d, d["direction"] == direction)
        arrow = direction.replace("_to_", " → ")
        if whole:
            dd = dd.assign(_row=[f"L{int(x) + 1}" for x in dd["layer"]])
            rows = _sel(dd, dd["_kind"] != "heads")
            if not rows.empty:
                wide = rows.pivot_table(
                    index="_row", columns="_kind", values=value, aggfunc="first", sort=False
                )
                wide = wide.reindex(columns=[k for k in wanted if k != "heads"])
                panels.append((arrow, wide, "module", "layer"))
            heads = _sel(dd, dd["_kind"] == "heads")
            if not heads.empty:
                heads = heads.assign(
                    _row=[f"L{int(a) + 1} att{int(h)}" for a, h in zip(heads["layer"],
                                                                      heads["head"], strict=True)]
                )
                wide = heads.pivot_table(
                    index="_row", columns="_kind", values=value, aggfunc="first", sort=False
                )
                panels.append((f"heads, {arrow}", wide, "", "head"))
            continue
        for kind in wanted:
            dk = _sel(dd, dd["_kind"] == kind)
            if dk.empty:
                continue
            if kind == "heads":
                labels = [f"L{int(a) + 1} att{int(h)}" for a, h in zip(dk["layer"], dk["head"],
                                                                      strict=True)]
            else:
                labels = [f"L{int(a) + 1}" for a in dk["layer"]]
            dk = dk.assign(_row=labels, _col=[_position_label(p) for p in dk["position"]])
            wide = dk.pivot_table(
                index="_row", columns="_col", values=value, aggfunc="first", sort=False
            )
            panels.append((f"{kind}, {arrow}", wide, "position", "head" if kind == "heads" else
                           "layer"))
    allv = np.concatenate([w.to_numpy(dtype=float).ravel() for _, w, _, _ in panels])
    vmin, vmax = _limits(allv, diverging)
    n_dir = len(directions)
    per_row = max(1, len(panels) // n_dir)
    widest = max(w.shape[1] for _, w, _, _ in panels)
    tallest = max(w.shape[0] for _, w, _, _ in panels)
    fig = Figure(
        figsize=(per_row * (1.6 + 0.55 * widest), n_dir * (1.0 + 0.3 * tallest)),
        layout="constrained",
    )
    axes = fig.subplots(n_dir, per_row, squeeze=False)
    for ax, (name, wide, xlabel, ylabel) in zip(axes.ravel(), panels, strict=False):
        show = annotate if annotate is not None else wide.size <= 150
        _panel(ax, wide, name, xlabel, cmap=cmap, vmin=vmin, vmax=vmax, annotate=show)
        ax.set_ylabel(ylabel)
    for ax in axes.ravel()[len(panels) :]:
        ax.remove()
    fig.suptitle(title or f"causal patching: {value}")
    return fig


def plot_lens(
    df: pd.DataFrame,
    *,
    names: str = "paper",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool = True,
    title: str | None = None,
) -> Figure:
    """Draw a :func:`~pcp_lens.lens.group_lens` table: one module/head × position panel per metric.

    Rows are the table's modules in forward order (paper names ``L1 mlp``, ``L2 att3``,
    ``full model``); columns the scored positions as given; every panel shares one colour scale.

    Args:
        df: the tidy table of :func:`~pcp_lens.lens.group_lens`.
        names: ``"paper"`` (1-based) or ``"short"`` (``"mlp0"``) row labels.
        cmap: colormap name.
        vmin: lower end of the colour scale (default: the table's minimum).
        vmax: upper end of the colour scale (default: the table's maximum).
        annotate: write each value in its cell.
        title: figure title.

    Returns:
        The matplotlib ``Figure`` (one axes per metric, then colorbars).

    Examples:
        >>> import torch
        >>> from pcp_lens import TokenGroups, group_lens
        >>> from pcp_lens.testing import tiny_model
        >>> groups = TokenGroups({"neg": range(10), "pos": range(10, 20)}, d_vocab=50)
        >>> df = group_lens(tiny_model(), torch.randint(0, 50, (4, 3)), groups, [0, 1],
        ...                 progress=False)
        >>> fig = plot_lens(df)
        >>> [ax.get_title() for ax in fig.axes if ax.get_label() == "panel"]
        ['neg', 'pos']
    """
    cols = ("site", "paper_name", "metric", "position", "value")
    df = _check_table(df, cols, "df", "group_lens")
    if names not in ("paper", "short"):
        raise ValueError(f"names must be 'paper' or 'short', got {names!r}")
    metrics = list(dict.fromkeys(df["metric"]))
    row = "paper_name" if names == "paper" else "site"
    allv = df["value"].to_numpy(dtype=float)
    lo, hi = _limits(allv, diverging=False)
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax
    n_rows = len(set(df[row]))
    n_pos = len(set(df["position"]))
    fig = Figure(
        figsize=(len(metrics) * (2.2 + 0.7 * n_pos), 1.0 + 0.3 * n_rows), layout="constrained"
    )
    axes = fig.subplots(1, len(metrics), squeeze=False, sharey=True)[0]
    order = list(dict.fromkeys(df[row]))
    for ax, m in zip(axes, metrics, strict=True):
        dm = df[df["metric"] == m]
        wide = dm.pivot_table(index=row, columns="position", values="value", aggfunc="first",
                              sort=False)
        wide = wide.reindex(index=order, columns=list(dict.fromkeys(dm["position"])))
        _panel(ax, wide, str(m), "position", cmap=cmap, vmin=vmin, vmax=vmax, annotate=annotate)
    axes[0].set_ylabel("module")
    fig.suptitle(title or "group logit lens")
    return fig


def plot_ablation(
    df: pd.DataFrame,
    *,
    layout: str = "site",
    names: str = "paper",
    ax: Axes | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool = True,
    title: str | None = None,
) -> Figure:
    """Draw an :func:`~pcp_lens.ablation.ablation_sweep` table: ablated sites × (input set, metric).

    The layout of :func:`~pcp_lens.ablation.ablation_table`: ``"site"`` has one row per ablation
    (``L1 attn``, ..., combinations, then ``Unchanged``); ``"layer"`` is Tab. I / VIII, one row
    per 1-based layer and one column per (input set, metric, kind).

    Args:
        df: the tidy table of :func:`~pcp_lens.ablation.ablation_sweep`.
        layout: ``"site"`` or ``"layer"``.
        names: ``"paper"`` (1-based) or ``"short"`` row labels.
        ax: draw into these axes; by default a new figure.
        cmap: colormap name.
        vmin: lower end of the colour scale (default: the table's minimum).
        vmax: upper end of the colour scale (default: the table's maximum).
        annotate: write each value in its cell.
        title: axes title (default ``"<method> ablation"``).

    Returns:
        The matplotlib ``Figure``.

    Examples:
        >>> import torch
        >>> from pcp_lens import TokenGroups, ablation_sweep, group_metrics
        >>> from pcp_lens.testing import tiny_model
        >>> groups = TokenGroups({"neg": range(10), "pos": range(10, 20)}, d_vocab=50)
        >>> df = ablation_sweep(tiny_model(), {"pt": torch.randint(0, 50, (8, 3))},
        ...                     group_metrics(groups), method="zero", progress=False)
        >>> ax = plot_ablation(df).axes[0]
        >>> [t.get_text() for t in ax.get_yticklabels()]
        ['L1 attn', 'L1 mlp', 'L2 attn', 'L2 mlp', 'Unchanged']
    """
    from pcp_lens.ablation import ablation_table

    cols = ("site", "paper_name", "layer", "kind", "head", "method", "input_set", "metric",
            "value")
    df = _check_table(df, cols, "df", "ablation_sweep")
    if layout not in ("site", "layer"):
        raise ValueError(f"layout must be 'site' or 'layer', got {layout!r}")
    if names not in ("paper", "short"):
        raise ValueError(f"names must be 'paper' or 'short', got {names!r}")
    wide = ablation_table(df, layout, names)  # type: ignore[arg-type]
    methods = [m for m in dict.fromkeys(df["method"]) if m != "none"]
    fig = heatmap(
        wide,
        ax=ax,
        title=title or f"{'/'.join(methods) or 'no'} ablation",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        annotate=annotate,
    )
    target = ax if ax is not None else fig.axes[0]
    target.set_ylabel("ablated site" if layout == "site" else "layer")
    levels = ["input_set", "metric", "kind"] if layout == "layer" else ["input_set", "metric"]
    varying = [c.replace("_", " ") for c in levels if len(set(df[c])) > 1]
    target.set_xlabel(", ".join(varying) or "metric")
    return fig


def _sweep_axes(df: pd.DataFrame) -> list[str]:
    fixed = {"setting", "input_set", "metric", "value"}
    return [c for c in df.columns if c not in fixed]


def plot_factor_sweep(
    df: pd.DataFrame,
    *,
    metrics: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Draw a :func:`~pcp_lens.tuning.sweep` table: scores per input set against the factor setting.

    One line per (input set, metric) over the grid's settings (Tab. V–VII); the unedited
    model's score is a dotted line of the same colour, and the validation loss, if the sweep has
    it, a second panel below. A one-key grid of plain numbers gets a numeric x-axis labelled
    with the key; other grids show each setting's label.

    Args:
        df: the tidy table of :func:`~pcp_lens.tuning.sweep`.
        metrics: the metrics to draw (default every metric except the validation loss).
        title: figure title.

    Returns:
        The matplotlib ``Figure``: the score axes, then the validation-loss axes if any.

    Examples:
        >>> import torch
        >>> from pcp_lens import GroupMetric, TokenGroups, fit_pcp, sweep
        >>> from pcp_lens.testing import tiny_model
        >>> m = tiny_model()
        >>> sets = {"pp": torch.randint(0, 50, (8, 2)), "pt": torch.randint(0, 50, (8, 2))}
        >>> pcp = fit_pcp(m, torch.cat(list(sets.values())), "mlp0", 2, progress=False)
        >>> neg = GroupMetric(TokenGroups({"neg": range(10)}, d_vocab=50), "neg", k=5)
        >>> df = sweep(m, pcp, {"mlp0": [0.5, 1.0, 2.0]}, sets, neg)
        >>> ax = plot_factor_sweep(df).axes[0]
        >>> ax.get_xlabel(), [t.get_text() for t in ax.get_legend().get_texts()]
        ('mlp0 factor', ['pp', 'pt'])
    """
    df = _check_table(df, ("setting", "input_set", "metric", "value"), "df", "tuning.sweep")
    keys = _sweep_axes(df)
    is_val = (df["input_set"] == "validation") & (df["metric"] == "loss")
    scores, val = _sel(df, ~is_val), _sel(df, is_val)
    all_metrics = list(dict.fromkeys(scores["metric"]))
    chosen = all_metrics if metrics is None else list(metrics)
    unknown = [m for m in chosen if m not in all_metrics]
    if unknown:
        raise ValueError(f"metrics {unknown} are not in the table; it has {all_metrics}")
    scores = _sel(scores, scores["metric"].isin(chosen))
    base = _sel(scores, scores["setting"] == "unedited")
    grid = _sel(scores, scores["setting"] != "unedited")
    settings = list(dict.fromkeys(grid["setting"]))
    numeric = len(keys) == 1 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in grid[keys[0]]
    )

    def xs(rows: pd.DataFrame) -> list[float]:
        if numeric:
            return [float(v) for v in rows[keys[0]]]
        return [float(settings.index(s)) for s in rows["setting"]]

    n_panels = 2 if not val.empty else 1
    fig = Figure(
        figsize=(max(5.0, 0.6 * len(settings) + 2.5), 3.2 + 1.8 * (n_panels - 1)),
        layout="constrained",
    )
    axes = fig.subplots(n_panels, 1, squeeze=False, sharex=True,
                        height_ratios=[2, 1][:n_panels])[:, 0]
    ax = axes[0]
    multi = len(chosen) > 1
    pairs = list(dict.fromkeys(zip(grid["input_set"], grid["metric"], strict=True)))
    for i, (set_name, metric) in enumerate(pairs):
        rows = _sel(grid, (grid["input_set"] == set_name) & (grid["metric"] == metric))
        label = f"{set_name} {metric}" if multi else str(set_name)
        color = f"C{i % 10}"
        style = {"linestyle": "-"} if numeric else {"linestyle": "--", "linewidth": 0.8}
        ax.plot(xs(rows), rows["value"].to_numpy(dtype=float), marker="o", color=color,
                label=label, **style)
        ref = _sel(base, (base["input_set"] == set_name) & (base["metric"] == metric))
        if not ref.empty:
            ax.axhline(float(ref["value"].iloc[0]), color=color, linestyle=":", linewidth=1)
    ax.set_ylabel(chosen[0] if not multi else "score")
    ax.legend(fontsize=8, title="input set" + ("\n(dotted: unedited)" if not base.empty else ""),
              title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if not val.empty:
        vg = _sel(val, val["setting"] != "unedited")
        axes[1].plot(xs(vg), vg["value"].to_numpy(dtype=float), marker="o", color="k")
        vb = _sel(val, val["setting"] == "unedited")
        if not vb.empty:
            axes[1].axhline(float(vb["value"].iloc[0]), color="k", linestyle=":", linewidth=1)
        axes[1].set_ylabel("validation loss")
    last = axes[-1]
    if numeric:
        last.set_xlabel(f"{keys[0]} factor")
        ax.set_xlabel(f"{keys[0]} factor")
    else:
        last.set_xticks(range(len(settings)), settings, rotation=30, ha="right")
        last.set_xlabel("setting")
        ax.set_xlabel("setting")
    fig.suptitle(title or "PCP factor sweep")
    return fig


def plot_tuning_history(
    result: Any, *, log: bool | None = None, title: str | None = None
) -> Figure:
    """Draw an Optuna tuning run: objective per trial with the best so far, and each scale tried.

    Args:
        result: a :class:`~pcp_lens.tuning.TuneResult` or an ``optuna.Study``.
        log: log-scale objective axis (default: when every objective value is positive).
        title: figure title.

    Returns:
        The matplotlib ``Figure``: the objective axes, then the parameter axes.

    Examples:
        >>> import torch
        >>> from pcp_lens import GroupMetric, TokenGroups, fit_pcp, tune
        >>> from pcp_lens.testing import tiny_model
        >>> m = tiny_model()
        >>> sets = {"a": torch.randint(0, 50, (8, 2)), "b": torch.randint(0, 50, (8, 2))}
        >>> pcp = fit_pcp(m, torch.cat(list(sets.values())), "mlp0", 2, progress=False)
        >>> neg = GroupMetric(TokenGroups({"neg": range(10)}, d_vocab=50), "neg", k=5)
        >>> fig = plot_tuning_history(tune(m, pcp, sets, neg, n_trials=5, progress=False))
        >>> [ax.get_ylabel() for ax in fig.axes]
        ['objective', 'parameter value']
    """
    import optuna

    study = getattr(result, "study", result)
    if not isinstance(study, optuna.Study):
        raise ValueError(
            f"result must be a TuneResult or an optuna.Study, got {type(result).__name__}"
        )
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise ValueError("result: the study has no completed trial to draw")
    numbers = np.array([t.number for t in done])
    values = np.array([float(t.value) for t in done])  # type: ignore[arg-type]
    best = np.minimum.accumulate(values) if study.direction.name == "MINIMIZE" else (
        np.maximum.accumulate(values)
    )
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax, pax = fig.subplots(2, 1, sharex=True)
    ax.scatter(numbers, values, s=12, alpha=0.6, label="trial")
    ax.step(numbers, best, where="post", color="C3", label="best so far")
    use_log = bool((values > 0).all()) if log is None else log
    if use_log:
        ax.set_yscale("log")
    ax.set_ylabel("objective")
    ax.legend(fontsize=8)
    b = study.best_trial
    for i, name in enumerate(dict.fromkeys(k for t in done for k in t.params)):
        pts = [(t.number, t.params[name]) for t in done if name in t.params]
        color = f"C{i % 10}"
        pax.plot(*zip(*pts, strict=True), ".", color=color, alpha=0.6, label=name)
        if name in b.params:
            pax.axhline(b.params[name], color=color, linestyle=":", linewidth=1)
    pax.set_xlabel("trial")
    pax.set_ylabel("parameter value")
    pax.legend(fontsize=8, title="α (dotted: best)", title_fontsize=8)
    fig.suptitle(title or f"tuning history ({len(done)} trials, best {study.best_value:.3g})")
    return fig


def hidden_pca(
    model: Any,
    inputs: Mapping[str, Any],
    site: str = "resid_post0",
    position: int = -1,
    fit_on: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Project each input set's hidden state at one site and position onto a 2-component PCA.

    The paper's Fig. 3: the residual stream after layer 1 (``"resid_post0"``) at the last
    position, in the plane of a PCA fitted on some sets (e.g. the pure ``pp, nn, ss``).

    Args:
        model: a ``HookedTransformer`` (not modified).
        inputs: ``{set name: tokens or strings}`` (each set of equal length).
        site: a residual or module site (``"resid_post0"``, ``"mlp1"``; not a head).
        position: the position whose state is taken.
        fit_on: the sets the PCA is fitted on (default: all).

    Returns:
        A DataFrame with columns ``input_set``, ``pc1``, ``pc2``; ``df.attrs`` records ``site``,
        ``position``, ``fit_on`` and ``explained_variance_ratio``. Draw it with
        :func:`plot_hidden_pca`.

    Examples:
        >>> import torch
        >>> from pcp_lens.testing import tiny_model
        >>> sets = {"pp": torch.randint(0, 50, (6, 2)), "pt": torch.randint(0, 50, (6, 2))}
        >>> df = hidden_pca(tiny_model(), sets, fit_on=["pp"])
        >>> df.shape, df.attrs["fit_on"]
        ((12, 3), ['pp'])
    """
    import torch
    from sklearn.decomposition import PCA

    from pcp_lens import _tl
    from pcp_lens.inputs import as_tokens
    from pcp_lens.sites import Site

    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError("inputs must be a non-empty mapping {set name: tokens or strings}")
    s = Site.parse(site).validate(model)
    if s.head is not None or s.kind == "embed":
        raise ValueError(f"site must be a module or residual site (not a head or embed), got "
                         f"{site!r}")
    names = list(inputs) if fit_on is None else list(fit_on)
    unknown = [k for k in names if k not in inputs]
    if unknown:
        raise ValueError(f"fit_on names {unknown} that are not input sets; sets: {list(inputs)}")
    states: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for k, v in inputs.items():
            tokens = as_tokens(model, v, name=f"inputs[{k!r}]").tokens
            n = tokens.shape[1]
            if not -n <= position < n:
                raise ValueError(
                    f"position must be in {-n}..{n - 1} for input set {k!r}, got {position}"
                )
            _, cache = _tl.run_with_cache(model, tokens, [s.hook_name])
            states[k] = cache[s.hook_name][:, position].double().cpu().numpy()
    pca = PCA(n_components=2).fit(np.concatenate([states[k] for k in names]))
    frames = [
        pd.DataFrame({"input_set": k, "pc1": xy[:, 0], "pc2": xy[:, 1]})
        for k, xy in ((k, pca.transform(v)) for k, v in states.items())
    ]
    df = pd.concat(frames, ignore_index=True)
    df.attrs.update(
        site=s.name,
        position=position,
        fit_on=names,
        explained_variance_ratio=[float(x) for x in pca.explained_variance_ratio_],
    )
    return df


def plot_hidden_pca(
    df: pd.DataFrame, *, ax: Axes | None = None, title: str | None = None
) -> Figure:
    """Scatter a :func:`hidden_pca` table, one colour per input set (the paper's Fig. 3).

    Args:
        df: the table of :func:`hidden_pca` (columns ``input_set``, ``pc1``, ``pc2``).
        ax: draw into these axes; by default a new figure.
        title: axes title (default: the site in the paper's 1-based name and the position).

    Returns:
        The matplotlib ``Figure``; axis labels carry each component's explained variance.

    Examples:
        >>> import torch
        >>> from pcp_lens.testing import tiny_model
        >>> sets = {"pp": torch.randint(0, 50, (6, 2)), "pt": torch.randint(0, 50, (6, 2))}
        >>> ax = plot_hidden_pca(hidden_pca(tiny_model(), sets)).axes[0]
        >>> ax.get_xlabel().split(" (")[0], ax.get_title()
        ('PC 1', 'hidden state: L1 resid_post, position -1')
    """
    from pcp_lens.sites import Site

    df = _check_table(df, ("input_set", "pc1", "pc2"), "df", "hidden_pca")
    points = {
        str(k): g[["pc1", "pc2"]].to_numpy(dtype=float)
        for k, g in df.groupby("input_set", sort=False)
    }
    evr = df.attrs.get("explained_variance_ratio")
    site = df.attrs.get("site")
    default = (
        f"hidden state: {Site.parse(site).paper_name}, position {df.attrs.get('position')}"
        if site is not None
        else "hidden-state PCA"
    )
    fig = scatter(
        points,
        ax=ax,
        title=title or default,
        xlabel="PC 1" + (f" ({evr[0]:.0%} of variance)" if evr else ""),
        ylabel="PC 2" + (f" ({evr[1]:.0%} of variance)" if evr else ""),
    )
    return fig


def scan_map(table: pd.DataFrame, circuit: Sequence[str] = (), *, ax: Axes | None = None) -> Figure:
    """A backdoor scan's score as a layer × site-kind map (heads as columns), circuit framed.

    Args:
        table: a :class:`pcp_lens.scan.BackdoorScan` table (``site, kind, layer, head, score``).
        circuit: site names to frame (the scan's circuit).
        ax: draw into these axes; by default a new figure.

    Examples:
        >>> t = pd.DataFrame({"site": ["embed", "attn0", "attn0.h0", "mlp0"],
        ...                   "kind": ["embed", "attn", "attn", "mlp"], "layer": [None, 0, 0, 0],
        ...                   "head": [None, None, 0, None], "score": [0.9, 0.1, 0.05, 0.8]})
        >>> fig = scan_map(t, ["mlp0"])
        >>> len(fig.axes[0].patches)
        1
    """
    need = ["site", "kind", "layer", "head", "score"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"table must be a BackdoorScan table with columns {need}; lacks {missing}")
    rows, cols, cells = [], [], {}
    for r in table.to_dict("records"):
        row = "embed" if pd.isna(r["layer"]) else f"L{int(r['layer']) + 1}"
        col = r["kind"] if pd.isna(r["head"]) else f"h{int(r['head'])}"
        rows.append(row)
        cols.append(col)
        cells[(row, col)] = (float(r["score"]), r["site"])
    row_order = list(dict.fromkeys(rows))
    kinds = [k for k in ("embed", "resid_pre", "attn", "mlp") if k in cols]
    heads = sorted({c for c in cols if c.startswith("h")}, key=lambda c: int(c[1:]))
    col_order = kinds + heads
    wide = pd.DataFrame(np.nan, index=row_order, columns=col_order)
    for (row, col), (v, _) in cells.items():
        wide.loc[row, col] = v
    fig = heatmap(
        wide, ax=ax, title="backdoor scan: score (share of the gap)", cmap="magma", fmt=".2f"
    )
    axes = fig.axes[0] if ax is None else ax
    from matplotlib.patches import Rectangle

    for (row, col), (_, site) in cells.items():
        if site in circuit:
            i, j = row_order.index(row), col_order.index(col)
            axes.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5, ec="cyan"))
    return fig
