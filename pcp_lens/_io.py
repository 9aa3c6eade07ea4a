"""Atomic file writes and format checks shared by everything pcp_lens saves."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any


def package_version() -> str:
    """The installed pcp_lens version, from the package metadata (``"unknown"`` if not installed).

    Examples:
        >>> package_version().count(".") >= 1
        True
    """
    try:
        return importlib.metadata.version("pcp_lens")
    except importlib.metadata.PackageNotFoundError:  # running from a bare source tree
        return "unknown"


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    A crash or an exception never leaves a half-written ``path`` (nor the temporary file).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with atomic_file(Path(d) / "a.txt") as tmp:
        ...         _ = tmp.write_text("hi")
        ...     sorted(p.name for p in Path(d).iterdir())
        ['a.txt']
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``.

    An existing ``path`` is moved aside first and put back if the swap fails, so a crash or an
    exception leaves either the old folder or the new one, never a mix (nor the temporary one).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with atomic_dir(Path(d) / "ck") as tmp:
        ...         _ = (tmp / "w.txt").write_text("hi")
        ...     sorted(p.name for p in (Path(d) / "ck").iterdir()), len(list(Path(d).iterdir()))
        (['w.txt'], 1)
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    old: Path | None = None
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
            os.replace(target, old / "x")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and (old / "x").exists() and not target.exists():
            os.replace(old / "x", target)  # put the previous folder back
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically; return the path."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def check_format(
    meta: Mapping[str, Any],
    fmt: str,
    version: int,
    bad: Callable[[str], Exception],
    prefix: str = "",
) -> None:
    """Refuse metadata of another format or format version (``bad(msg)`` builds the error)."""
    if meta.get("format") != fmt:
        raise bad(f"{prefix}'format' must be {fmt!r}, got {meta.get('format')!r}")
    if meta.get("format_version") != version:
        raise bad(
            f"{prefix}'format_version' must be {version} (this pcp_lens reads only that), got "
            f"{meta.get('format_version')!r}"
        )
