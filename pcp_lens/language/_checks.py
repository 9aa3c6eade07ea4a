"""Boundary checks shared by the language functions: each error names the argument, the bad value
and what is allowed (the core's contract), so nothing reaches torch, transformers or pandas as a
value they would reject with their own words, or accept and get silently wrong."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

#: dtype names accepted where a ``torch.dtype`` is expected (what the CLI's ``--dtype`` offers).
DTYPE_NAMES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def is_int(x: Any) -> bool:
    """True for an integer (``int``, NumPy's) that is not a ``bool`` (``True`` is not a count).

    Examples:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_int(
    value: Any, name: str, low: int = 1, *, none: bool = False, high: int | None = None
) -> Any:
    """Return ``value`` if it is an int in ``low..high`` (or ``None`` where ``none``), else raise.

    Examples:
        >>> check_int(0, "top_k", none=True)
        Traceback (most recent call last):
        ...
        ValueError: top_k must be None or an int >= 1, got 0
    """
    if none and value is None:
        return value
    if not is_int(value) or value < low or (high is not None and value > high):
        allowed = f"an int >= {low}" if high is None else f"an int in {low}..{high}"
        raise ValueError(f"{name} must be {'None or ' if none else ''}{allowed}, got {value!r}")
    return value


def with_overrides(config: Any, cls: type, overrides: Mapping[str, Any], where: str) -> Any:
    """``config`` (a ``cls``) with ``overrides`` replacing fields; other types or names raise.

    Examples:
        >>> from pcp_lens.language.generate import SamplingConfig
        >>> with_overrides(SamplingConfig(), SamplingConfig, {"n_sample": 3}, "sample_texts")
        Traceback (most recent call last):
        ...
        ValueError: sample_texts got unknown argument(s) ['n_sample']; allowed: the fields of ...
    """
    if not isinstance(config, cls):
        raise ValueError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    fields = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"{where} got unknown argument(s) {unknown}; allowed: the fields of {cls.__name__} "
            f"({', '.join(fields)})"
        )
    return dataclasses.replace(config, **overrides) if overrides else config


def check_strings(texts: Any, name: str, *, empty: bool = False) -> list[str]:
    """``texts`` as a list of strings; one string, non-strings or (unless ``empty``) none raise.

    Examples:
        >>> check_strings(["a", 3], "texts")
        Traceback (most recent call last):
        ...
        ValueError: texts[1] must be a string, got int 3
    """
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a list of strings, got one string {texts[:40]!r}")
    if hasattr(texts, "column_names"):  # a datasets.Dataset iterates over row dicts
        raise ValueError(
            f"{name} must be a list of strings, got a Dataset; pass one column, e.g. "
            f"ds['text'] (columns: {list(texts.column_names)})"
        )
    if isinstance(texts, Tensor | bytes | Mapping) or not isinstance(texts, Iterable):
        raise ValueError(f"{name} must be a list of strings, got {type(texts).__name__}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}] must be a string, got {type(t).__name__} {t!r:.40}")
    if not out and not empty:
        raise ValueError(f"{name} is empty; pass at least one string")
    return out


def check_indices(values: Any, name: str, n: int) -> set[int]:
    """``values`` as a set of indices into ``n`` items (``0..n-1``), else raise.

    Examples:
        >>> check_indices([0, 7], "skip", 3)
        Traceback (most recent call last):
        ...
        ValueError: skip must hold indices in 0..2, got [7]
    """
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a list of indices, got {type(values).__name__}")
    items = list(values)
    bad = [v for v in items if not is_int(v) or not 0 <= v < n]
    if bad:
        raise ValueError(f"{name} must hold indices in 0..{n - 1}, got {bad[:5]!r}")
    return set(items)


def check_device(device: Any, name: str = "device") -> torch.device | None:
    """A usable ``torch.device`` (or ``None``): a misspelt or absent device is named here.

    Examples:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("cdua")
        Traceback (most recent call last):
        ...
        ValueError: device='cdua' is not a torch device; allowed: 'cpu', 'cuda', ...
    """
    if device is None:
        return None
    if not isinstance(device, str | torch.device):
        raise ValueError(f"{name} must be a string or torch.device, got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"{name}={device!r} is not a torch device; allowed: 'cpu', 'cuda', 'cuda:N', 'mps', ..."
        ) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"{name}={device!r} but no CUDA GPU is available here; use 'cpu'")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"{name}={device!r} but only {n} CUDA device(s) exist (0..{n - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={device!r} but MPS is not available here; use 'cpu'")
    return dev


def check_dtype(dtype: Any, name: str = "dtype") -> torch.dtype | None:
    """A floating ``torch.dtype`` (or ``None``) from a dtype or one of :data:`DTYPE_NAMES`.

    Examples:
        >>> check_dtype("float16")
        torch.float16
        >>> check_dtype("half")
        Traceback (most recent call last):
        ...
        ValueError: dtype='half' is not allowed; allowed: a floating torch.dtype or one of ...
    """
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype in DTYPE_NAMES:
        return DTYPE_NAMES[dtype]
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    names = ", ".join(repr(n) for n in DTYPE_NAMES)
    raise ValueError(
        f"{name}={dtype!r} is not allowed; allowed: a floating torch.dtype or one of {names}"
    )


def check_probabilities(scores: Any, n: int, classifier: str) -> Float[Tensor, " n"]:
    """A classifier's output as ``n`` probabilities in [0, 1]; anything else raises.

    A logit or a score above 1 taken as a probability would make ASR silently wrong.

    Examples:
        >>> check_probabilities([0.2, 3.7], 2, "mine")
        Traceback (most recent call last):
        ...
        ValueError: classifier 'mine' returned values outside [0, 1] (e.g. 3.7 at text 1); ...
    """
    try:
        p = torch.as_tensor(scores, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"classifier {classifier!r} returned {type(scores).__name__}, not numbers; it must "
            "return one P(toxic) per text"
        ) from None
    if p.dim() != 1 or p.shape[0] != n:
        raise ValueError(
            f"classifier {classifier!r} returned shape {tuple(p.shape)} for {n} texts; it must "
            f"return one P(toxic) per text, shape ({n},)"
        )
    bad = ~((p >= 0) & (p <= 1))  # NaN is bad too
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"classifier {classifier!r} returned values outside [0, 1] (e.g. {float(p[i]):.3g} "
            f"at text {i}); it must return P(toxic) per text (apply a sigmoid or softmax to "
            "logits)"
        )
    return p


def check_fraction(
    value: Any, name: str, *, low_open: bool = False, high_open: bool = False
) -> float:
    """``value`` as a finite float in [0, 1] (ends excluded where asked), else raise.

    Examples:
        >>> check_fraction(1.5, "rate")
        Traceback (most recent call last):
        ...
        ValueError: rate must be a number in [0, 1], got 1.5
    """
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must be a number in {lo}0, 1{hi}, got {value!r}")
    return float(value)
