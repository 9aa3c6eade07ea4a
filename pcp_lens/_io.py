"""Atomic file writes and format checks shared by everything pcp_lens saves.

Temporary files and folders are named ``.<name>.<pid>.<random>.tmp`` (``.old`` for a folder
moved aside) beside their target, so :func:`remove_stale_temps` can tell those of a killed run
(its process is gone) from those of a run still writing. What is written gets the permissions a
plain ``open()`` or ``mkdir()`` would give under the user's umask, not the 0600/0700 of
:mod:`tempfile`.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
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


def _umask() -> int:
    """The process's umask (read without changing it where ``/proc`` tells it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it
    os.umask(mask)
    return mask


def _prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.(?P<kind>tmp|old)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files and folders that killed writers left under ``folder``.

    Only entries named as :func:`atomic_file` and :func:`atomic_dir` name them, whose process no
    longer runs, are touched. A folder that :func:`atomic_dir` had moved aside (``.old``) when its
    writer died before the new one took its place is put back. Returns what was removed.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = (Path(d) / ".results.json.999999999.abc.tmp").write_text("{")  # a dead pid
        ...     _ = (Path(d) / "results.json").write_text("{}")
        ...     [p.name for p in remove_stale_temps(d)], sorted(p.name for p in Path(d).iterdir())
        (['.results.json.999999999.abc.tmp'], ['results.json'])
    """
    removed: list[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in sorted(dirnames + filenames):
            m = _TEMP.match(entry)
            if m is None or _alive(int(m["pid"])):
                continue
            path = Path(dirpath) / entry
            moved, target = path / "x", Path(dirpath) / m["name"]
            if m["kind"] == "old" and moved.exists() and not target.exists():
                os.replace(moved, target)  # the writer died between its two renames
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                dirnames[:] = [d for d in dirnames if d != entry]
            else:
                with suppress(FileNotFoundError):
                    path.unlink()
            removed.append(path)
    return removed


def _umask_modes(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes plain ``mkdir``/``open`` would give.

    mkdtemp creates 0700, and safetensors (0.8) writes its files 0600 whatever the umask.
    """
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            os.chmod(Path(dirpath) / name, 0o777 & ~mask)
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                os.chmod(path, 0o666 & ~mask)


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    A crash or an exception never leaves a half-written ``path`` (nor the temporary file; a
    SIGKILL leaves it for :func:`remove_stale_temps`). ``path`` gets mode ``0o666`` less the
    umask, as a plain ``open(path, "w")`` would give it.

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
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path.name), suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600: give what open() would (writers may have re-created the file)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``.

    An existing ``path`` is moved aside first and put back if the swap fails, so a crash or an
    exception leaves either the old folder or the new one, never a mix (nor the temporary one;
    after a SIGKILL :func:`remove_stale_temps` cleans up and puts a moved-aside folder back).
    ``path`` gets mode ``0o777`` less the umask, as a plain ``mkdir`` would give it.

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
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(target.name), suffix=".tmp", dir=parent))
    old: Path | None = None
    try:
        yield tmp
        _umask_modes(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=_prefix(target.name), suffix=".old", dir=parent))
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
