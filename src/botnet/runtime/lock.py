"""One writer per directory: an advisory lock file that names its holder.

Two ``botnet train`` processes given the same ``--out`` would otherwise both
write there, and the directory would end up with one run's settings beside
the other's checkpoints. :class:`DirectoryLock` takes ``fcntl.flock`` on
``DIR/run.lock`` and writes the holder into it (pid, host, start time,
command), so a second process is refused with a line that says who holds
the directory.

Why ``flock`` and a file: the kernel releases a flock when its process dies,
however it dies (SIGKILL, OOM killer, a power cut ends every process), so a
lock can never outlive its run; the file's text only explains. A lock file
whose flock is free is therefore stale by definition: it is taken over and
the takeover reported, naming the process that left it (and saying whether
that process is gone).

The file is removed when the holder releases it. To stay correct with that
removal, :meth:`DirectoryLock.acquire` checks after locking that the path
still names the file it locked (a releaser may have unlinked it meanwhile)
and otherwise tries again. The name ``run.lock`` is neither a temporary file
of :mod:`botnet.runtime.store` (``.NAME.*.tmp``, removed when a run starts)
nor part of any committed file set.

Forked children (DataLoader workers) close their copy of the lock's file
descriptor at once (``os.register_at_fork``): a flock belongs to the open
file, which a fork shares, so a worker outliving a SIGKILLed run by a few
seconds would otherwise keep the directory locked for the resume that
follows.

Under torchrun only rank 0 locks; the other ranks act on rank 0's outcome.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from . import interrupts

__all__ = ["LOCK_NAME", "DirectoryBusy", "DirectoryLock", "check_free", "describe_holder", "holder_of"]

LOCK_NAME = "run.lock"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


_HELD: set[int] = set()  # file descriptors of the locks this process holds


def _close_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class DirectoryBusy(ValueError):
    """Another live process holds the directory (one line: the directory and the holder)."""


def _holder_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(["botnet", *sys.argv[1:]])[:300]}


def _read(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def describe_holder(record: dict[str, Any]) -> str:
    """"pid 123 on host h since 2026-... (botnet train ...)" from a lock file's record."""
    if not record.get("pid"):
        return "another process (it has not written its name yet)"
    text = f"pid {record['pid']} on host {record.get('host', '?')}"
    if record.get("since"):
        text += f" since {record['since']}"
    if record.get("command"):
        text += f" ({record['command']})"
    return text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class DirectoryLock:
    """The advisory lock of one directory (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.fd: int | None = None
        self.pid = os.getpid()
        self.notice: str | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> None:
        """Lock the directory (which must exist) for this process.

        Raises:
            DirectoryBusy: another live process holds it.

        Sets :attr:`notice` to a one-line notice when a stale lock file was replaced, or when the
        file system cannot lock at all (then the run goes on unlocked rather than not at all).
        """
        with interrupts.deferred():  # moments; a stop inside would leave the file, or a lock nobody releases
            self._acquire()

    def _acquire(self) -> None:
        """:meth:`acquire` without the signal guard."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in _UNSUPPORTED:  # e.g. an NFS mount without lock support: run, and say so
                    self.path.unlink(missing_ok=True)
                    self.notice = (f"{str(self.directory)!r} cannot be locked on its file system "
                                      f"({os.strerror(err.errno).lower()}); make sure no other run writes there")
                    return
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise _busy(self.directory, describe_holder(_read(self.path))) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file between our open and our lock: again
        previous = _read(self.path)
        if previous.get("pid"):
            pid, host = previous["pid"], previous.get("host")
            if host == socket.gethostname() and isinstance(pid, int):
                state = "is gone" if not _alive(pid) else "no longer holds it"
            else:
                state = "no longer holds it"
            self.notice = (f"took over the lock of {str(self.directory)!r} left by pid {pid} on host {host} "
                              f"(that process {state})")
        text = json.dumps(_holder_record()) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        self.fd, self.pid = fd, os.getpid()
        _HELD.add(fd)

    def release(self) -> None:
        """Remove the lock file and unlock (a no-op if not held)."""
        if self.fd is None or os.getpid() != self.pid:  # not held, or a forked child's copy (closed already)
            return
        with interrupts.deferred():
            self._release()

    def _release(self) -> None:
        """:meth:`release` without the signal guard."""
        assert self.fd is not None
        try:
            self.path.unlink(missing_ok=True)  # while still holding the lock: see acquire's check
        except OSError:
            pass
        _HELD.discard(self.fd)
        os.close(self.fd)
        self.fd = None


def _busy(directory: Path, holder: str) -> DirectoryBusy:
    return DirectoryBusy(f"{str(directory)!r} is in use by another run: {holder}; wait for it to end or choose "
                         "another directory")


def check_free(directory: str | os.PathLike[str]) -> None:
    """Raise :class:`DirectoryBusy` if a live process holds ``directory`` (for readers that write nothing)."""
    holder = holder_of(directory)
    if holder is not None:
        raise _busy(Path(directory), holder)


def holder_of(directory: str | os.PathLike[str]) -> str | None:
    """Who holds ``directory``'s lock now (a description), or None if no live process does."""
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return describe_holder(_read(path))
    finally:
        os.close(fd)
    return None


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
