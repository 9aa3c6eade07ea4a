"""Markdown tables for the reproduction reports (toy and language)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["fmt", "table"]


def fmt(x: Any) -> str:
    """Numbers with two decimals, anything else as ``str``.

    Examples:
        >>> fmt(0.125), fmt("L1"), fmt(True)
        ('0.12', 'L1', 'True')
    """
    return f"{x:.2f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; cells formatted by :func:`fmt`.

    Examples:
        >>> print(table(["a", "b"], [[1, "x"]]))
        | a | b |
        |---|---|
        | 1.00 | x |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)
