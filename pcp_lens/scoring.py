"""The one metric contract, the one position rule and the one table vocabulary of every technique.

Ablation, the group lens, patching and PCP tuning all turn logits into numbers the same way:

* A **metric** is either a plain callable ``logits [batch, pos, d_vocab] -> Tensor``
  (:data:`Metric`) or a :class:`PositionedMetric`: an object that declares the ``positions`` it
  reads and a ``score(selected)`` that scores the logits at those positions only, so a technique
  computes logits there and nowhere else (:class:`pcp_lens.GroupMetric`,
  :class:`pcp_lens.PositionMetric`).
  :func:`call_metric` is the one place that decides which of the two is called, and how.
* A metric returns one number (a mean over the batch) or one value per prompt (batch first,
  averaged over the prompt's remaining axes); :class:`RowMean` averages either over batches,
  weighted by rows, and refuses anything else, nan and inf included.
* **Positions** are ``None`` (every position, where a technique allows it), an int, or a sequence
  of distinct ints; negative ones count from the end. :func:`check_positions` checks the type and
  :func:`resolve_positions` the range against a sequence length, for every technique.
* Every result table is tidy, with one vocabulary (:data:`COLUMNS`), built by :func:`tidy_table`.

See ``docs/metrics.md`` for how to write a metric.

Examples:
    >>> import torch
    >>> from pcp_lens import PositionMetric
    >>> first = PositionMetric(lambda lg: lg[:, 0, 3].mean(), positions=(0,))
    >>> logits = torch.arange(24.0).reshape(1, 3, 8)
    >>> last = lambda lg: lg[:, -1, 3].mean()
    >>> float(call_metric(first, logits)), float(call_metric(last, logits))
    (3.0, 19.0)
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "COLUMNS",
    "Metric",
    "MetricLike",
    "PositionedMetric",
    "Positions",
    "RowMean",
    "call_metric",
    "check_metric",
    "check_positions",
    "declared_positions",
    "mean_value",
    "named_metrics",
    "pair_columns",
    "per_prompt",
    "resolve_positions",
    "tidy_table",
    "wide_table",
]

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Tensor]
Positions = int | Sequence[int] | None


@runtime_checkable
class PositionedMetric(Protocol):
    """A metric that declares the positions it reads and scores the logits at those positions.

    ``score`` receives ``[batch, len(positions), d_vocab]`` logits, the positions in the declared
    order, and returns one number or one value per prompt.

    Examples:
        >>> from pcp_lens import PositionMetric
        >>> isinstance(PositionMetric(lambda lg: lg.mean(), positions=(-1,)), PositionedMetric)
        True
    """

    positions: Sequence[int]

    def score(self, selected: Float[Tensor, "batch n_positions d_vocab"]) -> Tensor: ...


MetricLike = Metric | PositionedMetric

#: the columns every result table draws from, in this order (each table uses the ones that apply)
COLUMNS: tuple[str, ...] = (
    "direction",
    "site",
    "paper_name",
    "sites",
    "layer",
    "kind",
    "head",
    "method",
    "input_set",
    "metric",
    "position",
    "value",
    "baseline",
    "effect",
    "n",
)
_NULLABLE_INTS = ("layer", "head")


# -- positions ---------------------------------------------------------------------------------
def _as_position(p: Any) -> int | None:
    """``p`` as an int if it is an integer (numpy and 0-d integer tensors too), else None."""
    if isinstance(p, bool) or (isinstance(p, Tensor) and (p.dim() or p.is_floating_point())):
        return None
    try:
        return operator.index(p)
    except TypeError:
        return None


def check_positions(positions: Positions, name: str = "positions") -> tuple[int, ...] | None:
    """Normalise positions to a tuple of distinct ints (``None`` stays ``None``: all positions).

    The one rule of the library: an int means that one position, a sequence lists positions
    (at least one, none twice), and anything else (floats, bools, strings) is refused with a
    ``ValueError`` naming ``name``.

    Examples:
        >>> check_positions(1), check_positions([0, -1]), check_positions(None)
        ((1,), (0, -1), None)
        >>> check_positions([1.5])
        Traceback (most recent call last):
        ...
        ValueError: positions must be None, an int or a sequence of distinct ints; got 1.5 in [1.5]
    """
    if positions is None:
        return None
    single = _as_position(positions)
    if single is not None:
        return (single,)
    allowed = "None, an int or a sequence of distinct ints"
    if isinstance(positions, (str, bytes)) or not isinstance(positions, Iterable):
        raise ValueError(f"{name} must be {allowed}; got {positions!r}")
    items = list(positions)
    if not items:
        raise ValueError(
            f"{name} must name at least one position (or be None for all positions); got "
            f"{positions!r}"
        )
    out = []
    for p in items:
        q = _as_position(p)
        if q is None:
            raise ValueError(f"{name} must be {allowed}; got {p!r} in {positions!r}")
        out.append(q)
    if len(set(out)) != len(out):
        twice = sorted({p for p in out if out.count(p) > 1})
        raise ValueError(f"{name} must be {allowed}; got {twice} more than once in {positions!r}")
    return tuple(out)


def resolve_positions(
    positions: Positions, n: int, where: str = "", name: str = "positions"
) -> list[int] | None:
    """Turn positions (negative ones count from the end) into indices ``0..n-1``, or raise.

    Args:
        positions: ``None`` (all positions), an int or a sequence of distinct ints.
        n: the sequence length.
        where: context for the error message (e.g. a hook name).
        name: the argument named in error messages.

    Returns:
        The non-negative indices in the given order, or ``None`` for all positions.

    Examples:
        >>> resolve_positions([0, -1], 5)
        [0, 4]
        >>> resolve_positions([0, -5], 4)
        Traceback (most recent call last):
        ...
        ValueError: positions: position out of range: -5; sequences have 4 tokens, allowed ...
    """
    ps = check_positions(positions, name)
    if ps is None:
        return None
    idx = [p % n if -n <= p < n else None for p in ps]
    for p, i in zip(ps, idx, strict=True):
        if i is None:
            at = f" at {where}" if where else ""
            raise ValueError(
                f"{name}: position out of range{at}: {p}; sequences have {n} tokens, allowed "
                f"positions are 0..{n - 1} or -{n}..-1"
            )
    # distinct as given, but -1 and n-1 are the same position
    if len(set(idx)) != len(idx):
        raise ValueError(
            f"{name} name the same position twice for sequences of {n} tokens: {list(ps)}"
        )
    return cast(list[int], idx)


# -- the metric contract -----------------------------------------------------------------------
def declared_positions(metric: Any, name: str = "metric") -> tuple[int, ...] | None:
    """The positions a :class:`PositionedMetric` reads (``None`` for a plain metric).

    An object counts as positioned when it has a ``positions`` attribute that is not ``None``
    and a callable ``score``; its positions must then follow :func:`check_positions`.

    Examples:
        >>> from pcp_lens import PositionMetric
        >>> declared_positions(PositionMetric(sum, positions=(0, -1))), declared_positions(sum)
        ((0, -1), None)
    """
    pos = getattr(metric, "positions", None)
    if pos is None or not callable(getattr(metric, "score", None)):
        return None
    out = check_positions(pos, f"{name}.positions")
    assert out is not None
    return out


def check_metric(metric: Any, name: str = "metric") -> MetricLike:
    """Return ``metric`` if it is a metric (callable, or positioned), else raise ``ValueError``.

    Examples:
        >>> check_metric("neg")
        Traceback (most recent call last):
        ...
        ValueError: metric must be a callable logits [batch, pos, d_vocab] -> Tensor or an ...
    """
    if declared_positions(metric, name) is None and not callable(metric):
        raise ValueError(
            f"{name} must be a callable logits [batch, pos, d_vocab] -> Tensor or an object with "
            f".positions and .score(selected_logits) (see docs/metrics.md); got {metric!r}"
        )
    return cast(MetricLike, metric)


def named_metrics(
    metrics: MetricLike | Mapping[str, MetricLike], name: str = "metrics", default: str = "metric"
) -> dict[str, MetricLike]:
    """``{name: metric}`` from one metric (named ``default``) or a non-empty mapping, all checked.

    Examples:
        >>> list(named_metrics(lambda lg: lg.mean()))
        ['metric']
    """
    if isinstance(metrics, Mapping):
        if not metrics:
            raise ValueError(f"{name} is an empty mapping; pass at least one metric")
        out = {str(k): m for k, m in metrics.items()}
        for k, m in out.items():
            check_metric(m, f"metric {k!r}")
        return out
    return {default: check_metric(metrics, name)}


def call_metric(
    metric: MetricLike,
    logits: Float[Tensor, "batch k d_vocab"],
    positions: Sequence[int] | None = None,
    *,
    n: int | None = None,
    name: str = "metric",
    own_positions: bool = True,
) -> Tensor:
    """Evaluate a metric: the one rule every technique follows.

    ``logits[:, j]`` are the logits at absolute position ``positions[j]`` of sequences of ``n``
    tokens; ``positions=None`` means the full sequence (``logits[:, p]`` is position ``p``).
    A :class:`PositionedMetric` gets ``score`` of the columns at its declared positions, in its
    order (each must be among those given); a plain metric gets the full-sequence logits.
    With ``own_positions=False`` the caller has chosen the positions (the lens scores one
    position at a time): a positioned metric gets ``score(logits)``, a plain one ``metric(logits)``.

    Examples:
        >>> from pcp_lens import PositionMetric
        >>> last = PositionMetric(lambda lg: lg[:, 0, 0].mean(), positions=(-1,))
        >>> float(call_metric(last, torch.tensor([[[5.0], [7.0]]]), positions=[1, 3], n=4))
        7.0
    """
    declared = declared_positions(metric, name)
    if not own_positions:
        return (cast(PositionedMetric, metric).score if declared else cast(Metric, metric))(logits)
    seq = logits.shape[1] if positions is None else n
    if declared is None:
        if positions is not None and list(positions) != list(range(seq or 0)):
            raise ValueError(
                f"{name} is a plain metric, which reads the logits of every position; it cannot "
                f"be scored on positions {list(positions)} alone (declare .positions and .score "
                "to score selected positions; see docs/metrics.md)"
            )
        return cast(Metric, metric)(logits)
    if seq is None:
        raise ValueError("call_metric needs n (the sequence length) when positions are given")
    want = resolve_positions(declared, seq, name=f"{name}.positions")
    assert want is not None
    have = list(range(seq)) if positions is None else list(positions)
    missing = [p for p in want if p not in have]
    if missing:
        raise ValueError(
            f"{name} reads positions {missing} (of {list(declared)}) but logits were computed "
            f"at {have} only"
        )
    cols = [have.index(p) for p in want]
    return cast(PositionedMetric, metric).score(logits[:, cols])


class RowMean:
    """The mean of metric values over batches, weighted by rows; refuses malformed values.

    Examples:
        >>> acc = RowMean("neg")
        >>> acc.add(torch.tensor(1.0), 2); acc.add(torch.tensor([0.0, 0.0, 1.0]), 3)
        >>> acc.value, acc.n
        (0.6, 5)
    """

    def __init__(self, name: str = "metric") -> None:
        self.name = name
        # errors name the metric: the argument itself ("metric") or an entry of a mapping
        self._label = "metric" if name == "metric" else f"metric {name!r}"
        self.total = 0.0
        self.n = 0
        # per-prompt values, kept while every batch gives them (a batch mean cannot be split)
        self._rows: list[Tensor] | None = []

    def add(self, value: Any, rows: int, where: str = "") -> None:
        """Add one batch's value: a scalar (a batch mean) or per-prompt values, batch first."""
        at = f" ({where})" if where else ""
        try:
            v = torch.as_tensor(value).detach()
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(
                f"{self._label} must return a Tensor or a number, got "
                f"{type(value).__name__}{at}"
            ) from e
        if v.dtype == torch.bool or v.is_complex():
            raise ValueError(f"{self._label} must return real numbers, got {v.dtype}{at}")
        v = v.double()
        if not bool(torch.isfinite(v).all()):
            raise ValueError(
                f"{self._label} returned non-finite values (nan or inf){at}; a metric "
                "must return finite numbers"
            )
        if v.numel() == 1 and (rows != 1 or v.dim() == 0):
            self.total += float(v) * rows
            if self._rows is not None:
                self._rows = None if rows > 1 else [*self._rows, v.reshape(1).cpu()]
        elif v.dim() >= 1 and v.shape[0] == rows:
            per_row = v.reshape(rows, -1).mean(1)
            self.total += float(per_row.sum())
            if self._rows is not None:
                self._rows.append(per_row.cpu())
        else:
            raise ValueError(
                f"{self._label} must return a scalar (a mean over the batch) or per-prompt "
                f"values with the batch first; got shape {tuple(v.shape)} for a batch of "
                f"{rows}{at}"
            )
        self.n += rows

    @property
    def value(self) -> float:
        """The mean so far (nan before any batch)."""
        return self.total / self.n if self.n else float("nan")

    @property
    def per_row(self) -> Float[Tensor, " n"] | None:
        """Every prompt's value in input order (float64), or ``None`` if a batch gave only a mean.

        Examples:
            >>> acc = RowMean(); acc.add(torch.tensor([1.0, 3.0]), 2); acc.per_row.tolist()
            [1.0, 3.0]
        """
        return torch.cat(self._rows) if self._rows else None

    def pair_columns(self) -> dict[str, Any]:
        """The per-pair table columns: ``se`` (standard error of the mean) and ``pairs``.

        ``pairs`` is a tuple of every prompt's value in input order. Raises if a batch
        returned only its mean (make the metric per-prompt with :func:`per_prompt`).

        Examples:
            >>> acc = RowMean(); acc.add(torch.tensor([1.0, 3.0]), 2)
            >>> acc.pair_columns()
            {'se': 1.0, 'pairs': (1.0, 3.0)}
        """
        rows = self.per_row
        if rows is None:
            raise ValueError(
                f"{self._label} returned a batch mean, so per-pair values are unknown; return "
                "one value per prompt or wrap the metric with pcp_lens.scoring.per_prompt"
            )
        return pair_columns(rows)


def pair_columns(values: Float[Tensor, " n"]) -> dict[str, Any]:
    """``{"se": standard error of the mean, "pairs": tuple of the values}`` of per-pair values.

    Examples:
        >>> pair_columns(torch.tensor([1.0, 3.0, 5.0, 7.0]))
        {'se': 1.2909944487358056, 'pairs': (1.0, 3.0, 5.0, 7.0)}
    """
    v = values.double().reshape(-1)
    se = float(v.std() / len(v) ** 0.5) if len(v) > 1 else float("nan")
    return {"se": se, "pairs": tuple(v.tolist())}


class _PerPrompt:
    """A metric that returns one value per prompt, however the wrapped metric reduces."""

    def __init__(self, metric: MetricLike) -> None:
        self.metric = metric
        declared = declared_positions(metric)
        if declared is not None:
            self.positions = declared

    def _rows(self, fn: Callable[[Tensor], Any], logits: Tensor) -> Tensor:
        v = torch.as_tensor(fn(logits))
        b = logits.shape[0]
        if b > 1 and v.numel() == 1:
            # a batch mean: score each prompt alone (a mean over one prompt is its value)
            return torch.stack(
                [torch.as_tensor(fn(logits[i : i + 1])).reshape(()) for i in range(b)]
            )
        return v

    def score(self, selected: Tensor) -> Tensor:
        return self._rows(cast(PositionedMetric, self.metric).score, selected)

    def __call__(self, logits: Tensor) -> Tensor:
        return self._rows(cast(Metric, self.metric), logits)

    def __repr__(self) -> str:
        return f"per_prompt({self.metric!r})"


def per_prompt(metric: MetricLike) -> MetricLike:
    """The same metric, returning one value per prompt even where ``metric`` returns a batch mean.

    A metric that already returns per-prompt values is used as it is; a dataclass metric with
    ``reduce="mean"`` (:class:`pcp_lens.GroupMetric`) switches to ``reduce="none"``; any other
    metric that returns a mean is scored on each prompt alone (the mean over one prompt is that
    prompt's value).

    Examples:
        >>> mean_last = lambda lg: lg[:, -1, 0].mean()
        >>> per_prompt(mean_last)(torch.arange(6.0).reshape(2, 3, 1)).tolist()
        [2.0, 5.0]
    """
    check_metric(metric)
    if isinstance(metric, _PerPrompt):
        return metric
    if dataclasses.is_dataclass(metric) and getattr(metric, "reduce", None) == "mean":
        # GroupMetric and its kind: the per-prompt values without a second pass
        return cast(MetricLike, dataclasses.replace(cast(Any, metric), reduce="none"))
    return cast(MetricLike, _PerPrompt(cast(MetricLike, metric)))


def mean_value(value: Any, rows: int, name: str = "metric", where: str = "") -> float:
    """One batch's metric value as a float: the batch mean (see :class:`RowMean`).

    Examples:
        >>> mean_value(torch.tensor([1.0, 2.0]), 2)
        1.5
    """
    acc = RowMean(name)
    acc.add(value, rows, where)
    return acc.value


# -- tables ------------------------------------------------------------------------------------
def tidy_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """A result table: vocabulary columns in :data:`COLUMNS` order, then any others.

    ``layer`` and ``head`` are nullable ints (``<NA>`` for rows without one).

    Examples:
        >>> df = tidy_table([{"value": 1.0, "site": "mlp0", "layer": 0, "head": None}])
        >>> df.columns.tolist(), str(df["head"].dtype), df["head"].isna().tolist()
        (['site', 'layer', 'head', 'value'], 'Int64', [True])
    """
    df = pd.DataFrame(list(records))
    order = [c for c in COLUMNS if c in df.columns]
    df = cast(pd.DataFrame, df[order + [c for c in df.columns if c not in order]])
    for col in _NULLABLE_INTS:
        if col in df.columns:
            df[col] = pd.array(
                [None if v is None or pd.isna(v) else int(v) for v in df[col]], dtype="Int64"
            )
    return df


def wide_table(
    df: pd.DataFrame, index: str, columns: Sequence[str], values: str = "value"
) -> pd.DataFrame:
    """Pivot a tidy table, keeping rows and columns in order of first appearance.

    Column levels holding a single value are dropped (at least one level is kept).

    Examples:
        >>> t = pd.DataFrame({"m": ["b", "b", "a"], "g": ["x", "y", "x"], "value": [1, 2, 3]})
        >>> wide_table(t, "m", ["g"]).to_dict()
        {'x': {'b': 1.0, 'a': 3.0}, 'y': {'b': 2.0, 'a': nan}}
    """
    cols = [c for c in columns if cast(pd.Series, df[c]).nunique(dropna=False) > 1] or [columns[-1]]
    wide = df.pivot_table(index=index, columns=cols, values=values, aggfunc="first", sort=False)
    wide = wide.reindex(index=list(dict.fromkeys(df[index])))
    if len(cols) == 1:
        wide = wide.reindex(columns=list(dict.fromkeys(df[cols[0]])))
        wide.columns.name = None
    else:
        # each level in its own order of first appearance, the first level slowest
        ranks = [{v: i for i, v in enumerate(dict.fromkeys(df[c]))} for c in cols]
        order = sorted(
            dict.fromkeys(zip(*(df[c] for c in cols), strict=True)),
            key=lambda t: tuple(r[v] for r, v in zip(ranks, t, strict=True)),
        )
        wide = wide.reindex(columns=pd.MultiIndex.from_tuples(order, names=cols))
    wide.index.name = None
    return wide.astype(float)
