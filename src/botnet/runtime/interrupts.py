"""SIGINT and SIGTERM for the ``botnet`` command: a clean stop, with one line, at any moment.

A scheduler (SLURM, Kubernetes) sends SIGTERM before it kills a job, and a
user presses Ctrl-C (SIGINT) whenever they like. Python's defaults are a
``KeyboardInterrupt`` traceback for the one and a silent death for the other,
which may leave a temporary file behind. Here both become
:class:`Interrupted`, an exception that unwinds the stack (so every
``finally`` and every clean-up of a half-written temporary file runs), and the
command turns it into one line and exit status ``128 + signal`` (130, 143).

Stages:

* :func:`guard_start` runs first thing when the package is imported by the
  ``botnet`` command itself (``botnet ...`` or ``python -m botnet ...``, also
  under torchrun): importing torch takes seconds, and nothing has been written
  yet, so a signal then prints the line and exits at once.
* :func:`install` (the command's ``main``) makes a signal raise
  :class:`Interrupted` in the main thread.
* :func:`deferred` holds a signal back over a short stretch that must not be
  cut (renaming a committed file set into place): it is raised when the
  stretch ends. A long write (a large checkpoint) is not deferred: it is cut,
  and its temporary file removed, so a stop never waits on one.

Only the process that installed the handlers raises: a forked child (a
DataLoader worker) ends quietly on SIGINT, as torch's worker loop expects,
and leaves SIGTERM to the main process, which shuts its workers down as it
unwinds; it never prints the command's line. Library users who never call :func:`install` keep Python's
defaults; :func:`deferred` then does nothing.
"""

from __future__ import annotations

import _thread
import itertools
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["Interrupted", "deferred", "exit_code", "guard_start", "install", "installed", "received", "signal_name"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``str()`` is the one line to print (set by whoever knows what was saved).

    A KeyboardInterrupt, so code that already stops cleanly on Ctrl-C (DataLoader workers, progress bars)
    does the same on SIGTERM.
    """

    def __init__(self, signum: int, message: str | None = None) -> None:
        super().__init__(message or f"interrupted by {signal_name(signum)}")
        self.signum = signum
        self.message = message

    def __str__(self) -> str:
        return self.message or f"interrupted by {signal_name(self.signum)}"


class _State:
    owner: int | None = None  # the pid whose handler raises
    received: int | None = None  # the first signal received
    repeats = 0
    defer_depth = 0
    pending: int | None = None
    in_hook = False  # running _unraisable
    previous_hook: Any = None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal number (SIGINT 130, SIGTERM 143)."""
    return 128 + signum


def received() -> int | None:
    """The signal this process received since :func:`install` (None: none)."""
    return _State.received


def _is_botnet_command() -> bool:
    """Whether this interpreter runs the ``botnet`` command (console script or ``python -m botnet``)."""
    if sys.argv and os.path.basename(sys.argv[0]) == "botnet":  # the console script (argv[0] is its path)
        return True
    argv = list(getattr(sys, "orig_argv", []))  # the interpreter's own options: python [-u] -m botnet ...
    return any(a == "-m" and b == "botnet" for a, b in itertools.pairwise(argv))


def _exit_now(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write(f"botnet: interrupted by {signal_name(signum)} while starting; nothing was written\n")
    sys.stderr.flush()
    os._exit(exit_code(signum))


def guard_start() -> None:
    """While the ``botnet`` command imports its modules, a signal prints one line and exits (nothing to save).

    A no-op when the package is imported by anything else (a library user, pytest).
    """
    if not _is_botnet_command() or _State.owner is not None:
        return
    try:
        for signum in SIGNALS:
            signal.signal(signum, _exit_now)
    except ValueError:  # not the main thread
        return


def _raise(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _State.owner:  # a forked DataLoader worker
        if signum == signal.SIGINT:
            raise KeyboardInterrupt  # what torch's worker loop expects, and ends quietly on
        # SIGTERM: a scheduler signals every process of the job. Dying here would make the main
        # process's DataLoader report a killed worker (a traceback) while it stops; the main process
        # shuts its workers down as it unwinds (and a worker whose parent is gone exits by itself).
        return
    if _State.received is not None:
        # Already stopping: the first signal's clean-up is under way (it takes moments). A second signal
        # is often the same request twice (a terminal's Ctrl-C reaches torchrun, which forwards SIGTERM);
        # a third is someone who will not wait: stop now (the next start removes temporary files).
        _State.repeats += 1
        if _State.repeats >= 2:
            os._exit(exit_code(_State.received))
        return
    if _State.in_hook:  # inside _unraisable, which would swallow it too: once more, from outside
        _redeliver(signum)
        return
    _State.received = signum
    if _State.defer_depth:
        _State.pending = signum
        return
    raise Interrupted(signum)


def _redeliver(signum: int) -> None:
    """Send ``signum`` to this process again, from another thread, as if it arrived now.

    From a thread because ``os.kill`` on the main thread runs the handler at once, inside the caller
    (Python's unraisable hook, which would swallow it again); sent from elsewhere, the main thread runs
    the handler at its next bytecode, in code that propagates what it raises. ``_thread``, not
    ``threading``: ``Thread.start`` waits for the thread in Python code, where the handler could run.
    """
    _State.received = None  # the same stop, not a second signal (_raise counts those)
    _thread.start_new_thread(_kill_soon, (os.getpid(), signum))


def _kill_soon(pid: int, signum: int) -> None:
    time.sleep(0.01)  # the main thread leaves the hook first (it holds the GIL meanwhile in any case)
    os.kill(pid, signum)


def _unraisable(report: Any) -> None:
    """Where Python swallows what a handler raises, deliver the stop again; after a stop, drop the noise.

    Python runs a signal's handler at the next bytecode of the main thread, which may be inside code
    whose exceptions it cannot propagate and reports here instead: a ``__del__``, a weakref callback,
    an ``os.register_at_fork`` callback (``logging`` registers one, which runs right after each
    DataLoader worker is forked). An :class:`Interrupted` lost there would let the command run on as
    if no signal came (seen: a Ctrl-C at the start of an epoch, and training went on to the end), so
    it is delivered again (:func:`_redeliver`). Other reports after a stop signal are the clean-up's
    noise (a DataLoader that finds its workers ended by the same SIGTERM: torch's workers install their
    own C handler for it), not a failure to report. Before a signal, Python's hook as usual.
    """
    if os.getpid() != _State.owner:
        (_State.previous_hook or sys.__unraisablehook__)(report)
        return
    _State.in_hook = True
    try:
        stop = getattr(report, "exc_value", None)
        if isinstance(stop, Interrupted) and stop.message is None and _State.received == stop.signum:
            _redeliver(stop.signum)
        elif _State.received is None:
            (_State.previous_hook or sys.__unraisablehook__)(report)
    finally:
        _State.in_hook = False


def install() -> None:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` in this process's main thread."""
    for signum in SIGNALS:
        signal.signal(signum, _raise)
    _State.owner = os.getpid()
    _State.received = _State.pending = None
    _State.repeats = 0
    if sys.unraisablehook is not _unraisable:
        _State.previous_hook = sys.unraisablehook
        sys.unraisablehook = _unraisable


@contextmanager
def installed() -> Iterator[None]:
    """:func:`install` for the block, then the handlers from before (a command run in-process, e.g. by tests)."""
    try:
        previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
        install()
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is None or handler is _exit_now:  # the start is over: "while starting" would be wrong
                handler = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            signal.signal(signum, handler)
        _State.owner = None
        _State.received = _State.pending = None  # a stop belongs to the command that received it
        sys.unraisablehook = _State.previous_hook or sys.__unraisablehook__


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT / SIGTERM back until the block ends (keep it to moments: renames, a small file)."""
    _State.defer_depth += 1
    try:
        yield
    finally:
        _State.defer_depth -= 1
    if _State.defer_depth == 0 and _State.pending is not None:
        signum, _State.pending = _State.pending, None
        raise Interrupted(signum)
