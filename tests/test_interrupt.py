"""Signals in long runs (:mod:`pcp_lens._interrupt`): SIGTERM unwinds, and a worker whose parent
was SIGKILLed ends itself, removing its temporary files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pcp_lens._interrupt import Interrupted, deferred_signals, interruptible

# a parent that starts one worker (spawn, worker_init), waits until the worker is writing a
# file atomically, reports the worker's pid and then dies by SIGKILL
PARENT = textwrap.dedent(
    """
    import multiprocessing, os, sys, time
    from pathlib import Path
    from pcp_lens._interrupt import worker_init

    def work(out):
        from pcp_lens._io import atomic_file
        with atomic_file(Path(out) / "result.json") as tmp:
            tmp.write_text("partial")
            time.sleep(600)

    if __name__ == "__main__":
        out = Path(sys.argv[1])
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(1, initializer=worker_init, initargs=(os.getpid(),))
        pool.apply_async(work, (str(out),))
        while not any(out.iterdir()):
            time.sleep(0.1)
        print(multiprocessing.active_children()[0].pid, flush=True)
        os.kill(os.getpid(), 9)
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in "ZX"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_worker_ends_itself_and_its_temp_file_when_its_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == -9, p.stderr
    worker = int(p.stdout.split()[0])
    t0 = time.monotonic()
    while _alive(worker) and time.monotonic() - t0 < 20:
        time.sleep(0.1)
    assert not _alive(worker)
    assert list(out.iterdir()) == []  # it unwound: atomic_file removed its temporary file


def test_sigterm_raises_interrupted_and_handlers_come_back():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as info, interruptible():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert info.value.exit_code == 143 and isinstance(info.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGINT) is before
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


class _SignalsWhileDying:
    """An object whose finalizer is running when the signal is handled (as when autograd frees
    a graph's objects during ``backward``): an exception raised there is printed and dropped."""

    def __init__(self, sig: int):
        self.sig = sig

    def __del__(self):
        os.kill(os.getpid(), self.sig)
        for _ in range(10_000):  # the handler runs here, inside the finalizer
            pass


@pytest.mark.parametrize("callback", ["__del__", "weakref"])
def test_a_signal_landing_in_a_finalizer_is_not_lost(callback):
    """The signal is delivered again once the finalizer or weakref callback has returned, so
    the run still stops (before, Ctrl-C during a poisoning's backward pass could be dropped)."""
    import weakref

    t0 = time.monotonic()
    with pytest.raises(Interrupted) as info, interruptible():
        if callback == "__del__":
            _SignalsWhileDying(signal.SIGTERM)  # dies at once
        else:
            class Key:
                pass

            table = weakref.WeakKeyDictionary()
            key = Key()
            table[key] = 1
            # the dictionary's own callback runs when the key dies; the signal arrives just then
            weakref.finalize(key, os.kill, os.getpid(), signal.SIGTERM)
            del key
        time.sleep(5)
    assert info.value.exit_code == 143
    assert time.monotonic() - t0 < 2.5


def test_deferred_signals_hold_with_other_threads_running():
    """The toy study defers a second Ctrl-C while it terminates its Pool, whose threads are
    running: a signal sent to the process reaches one of them, not the main thread's mask. Held
    anyway, it is raised once the block ends (measured: with the earlier per-thread mask the
    doctest of ``deferred_signals`` failed in 3 of 66 runs and this test in 3 of 3; now neither
    failed, the doctest in 60 runs)."""
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(20):
            done = []
            with pytest.raises(Interrupted), interruptible(), deferred_signals():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)  # the handler would run here, were the signal not held
                done.append(True)
            assert done == [True]
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        stop.set()
