"""Stopping long runs cleanly: SIGTERM and SIGINT unwind, and workers die with their parent.

Python's default SIGTERM action ends the process at once: no ``finally`` runs, so the atomic
writers' temporary files stay, and worker processes are orphaned (they finish, write into the
output folder and then wait forever for a parent that is gone). :func:`interruptible` turns both
signals into :class:`Interrupted` in the main thread instead; the study drivers then terminate
their workers and re-raise, and the command line exits with ``128 + signal``. Workers started
with :func:`worker_init` leave SIGINT to their parent (a terminal's Ctrl-C reaches the whole
process group), unwind on SIGTERM, and end themselves within a second when their parent has
died, even by SIGKILL (a worker still importing its modules, once that is done: the check starts
in the initializer).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Interrupted", "deferred_signals", "interruptible", "worker_init"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGINT or SIGTERM.

    Examples:
        >>> err = Interrupted(signal.SIGTERM)
        >>> err.exit_code, str(err)
        (143, 'interrupted by SIGTERM')
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


#: files whose code the interpreter runs as callbacks, printing and dropping what they raise
_CALLBACK_FILES = ("weakref.py", "_weakrefset.py")


def _swallowed(frame: FrameType | None) -> bool:
    """Whether an exception raised in ``frame`` would be printed and dropped, not propagated: a
    finalizer (``__del__``) or a weakref callback is on the stack (e.g. one run while autograd
    frees a graph during ``backward``: a Ctrl-C landing there was lost, and training went on)."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or os.path.basename(code.co_filename) in _CALLBACK_FILES:
            return True
        frame = frame.f_back
    return False


def _later(signum: int) -> None:
    """Deliver ``signum`` to the main thread again in 50 ms, out of the callback it hit."""
    main = threading.main_thread().ident
    assert main is not None
    threading.Timer(0.05, signal.pthread_kill, (main, signum)).start()


def _raise(signum: int, frame: FrameType | None) -> None:
    if _swallowed(frame):
        _later(signum)
        return
    raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (handlers restored after).

    Off the main thread (where Python cannot install handlers) this does nothing.

    Examples:
        >>> with interruptible():
        ...     try:
        ...         os.kill(os.getpid(), signal.SIGTERM)
        ...         time.sleep(5)
        ...     except Interrupted as err:
        ...         print(err.exit_code)
        143
        >>> signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        True
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, so a clean-up is not cut short.

    A held signal is raised again when the block ends, to whatever handler was there before
    (the default SIGTERM action ends the process then). Not a signal mask: a mask is per thread,
    and a signal sent to the process goes to any thread that does not block it (a
    ``multiprocessing.Pool`` runs three), after which Python runs the handler in the main thread
    anyway — so the clean-up this guards was cut short exactly where it is used. Off the main
    thread (where Python cannot install handlers) this does nothing.

    Examples:
        >>> with interruptible():
        ...     try:
        ...         with deferred_signals():
        ...             os.kill(os.getpid(), signal.SIGTERM)
        ...             print("clean-up done")
        ...     except Interrupted as err:
        ...         print(err)
        clean-up done
        interrupted by SIGTERM
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    old = {s: signal.signal(s, hold) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(held):
            signal.raise_signal(s)  # runs the restored handler now (raise() + check signals)


def _exit_on_term(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds (the atomic writers remove their temporary files) and multiprocessing
    # ends the worker quietly, without the traceback a KeyboardInterrupt would print
    if _swallowed(frame):
        _later(signum)
        return
    raise SystemExit(128 + signum)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)  # the parent is gone (re-parented): stop


def worker_init(parent: int) -> None:
    """Initializer of a worker process started by process ``parent`` (see the module notes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
