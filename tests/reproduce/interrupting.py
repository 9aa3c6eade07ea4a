"""Run ``pcp-lens`` in a process group of its own, signal it at chosen moments, and inspect what
is left: live processes of the group and temporary files (test helpers, Linux ``/proc``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pcp_lens._io import _TEMP

HAS_PROC = Path("/proc/self/stat").exists()


def start(argv: list[str]) -> subprocess.Popen:
    """``python -m pcp_lens.cli *argv`` as the leader of a new session and process group."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pcp_lens.cli", *argv],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it ended while we looked
            continue
        fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            pids.append(int(stat.parent.name))
    return pids


def temps(out: Path) -> list[Path]:
    """The atomic writers' temporary files and folders under ``out``."""
    return sorted(p for p in out.rglob(".*") if _TEMP.match(p.name))


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float) -> None:
    """Poll ``cond`` until it holds; fail if ``proc`` ends first or time runs out."""
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"ended (rc {proc.returncode}) too early: {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"the moment did not come within {timeout} s")
        time.sleep(0.2)


def interrupt(proc: subprocess.Popen, sig: int, whole_group: bool, timeout: float) -> str:
    """Send ``sig`` (to the leader, or to the whole group as a terminal's Ctrl-C does); wait
    until the leader has ended and no process of its group is left; return its stderr."""
    pgid = proc.pid
    (os.killpg if whole_group else os.kill)(pgid, sig)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        raise AssertionError(f"still running {timeout} s after signal {sig}") from None
    t0 = time.monotonic()
    while group(pgid) and time.monotonic() - t0 < timeout:
        time.sleep(0.2)
    left = group(pgid)
    if left:
        os.killpg(pgid, signal.SIGKILL)
    assert left == [], f"orphaned processes {left} after signal {sig}"
    return err


def without_timings(x, drop: tuple[str, ...] = ()):
    """A results.json without wall-clock times, load and memory figures, and ``drop`` keys."""
    skip = ("seconds", "load_average", "peak_rss_gib", "workers", *drop)
    if isinstance(x, dict):
        return {k: without_timings(v, drop) for k, v in x.items() if not any(s in k for s in skip)}
    if isinstance(x, list):
        return [without_timings(v, drop) for v in x]
    return x
