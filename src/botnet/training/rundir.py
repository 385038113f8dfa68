"""A training run's directory: one layout for every task, consistent after a kill at any moment.

Layout::

    OUT/config.json        settings, task, versions, data facts (rewritten at every start)
    OUT/metrics.jsonl      one JSON object per finished epoch
    OUT/last.pt            full training state after the latest epoch (resume from it)
    OUT/last.safetensors   the evaluated weights of that epoch, with the model description
    OUT/best.pt, OUT/best.safetensors   the same for the epoch with the best score
    OUT/manifest.json      which epoch each file describes (the commit record)
    OUT/run.lock           while a run is live: its pid, host and command (removed when it ends)

Each epoch's files are written as one set (:func:`botnet.runtime.store.write_file_set`):
``last.pt``, ``last.safetensors`` and ``metrics.jsonl`` always describe the
same epoch, and ``best.*`` the best epoch that ``last.pt`` records. Temporary
files of an interrupted write are removed when the next run starts (or
resumes) in the directory. Every file gets the mode the umask gives.

**One run at a time.** :meth:`RunDir.prepare` takes the directory's lock
(:class:`botnet.runtime.lock.DirectoryLock`) before it looks at or writes
anything, so a second process is refused in one line that names the holder;
a lock left by a dead process is taken over, and the takeover reported.

**What --resume accepts** (:meth:`RunDir.for_resume`): a run directory
holding a committed ``last.pt``, or a ``last.pt`` itself. A folder that was
never a run directory (no ``config.json``, ``manifest.json`` or ``last.pt``)
is called that, with the run directories inside it if it is a folder of
runs; a run directory whose run stopped before its first epoch ended is
called that.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..runtime.checks import check_out_dir
from ..runtime.lock import DirectoryLock, holder_of
from ..runtime.store import (MANIFEST, atomic_write, committed_path, load_checkpoint, read_manifest, recover_file_set,
                             torch_save, write_file_set)

__all__ = ["RunDir"]


class RunDir:
    """The files of one run (see the module docstring). Only rank 0 writes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    def holds_run(self) -> bool:
        """Whether an epoch was ever committed here."""
        return committed_path(self.last).is_file() or (self.path / MANIFEST).is_file()

    def was_run_dir(self) -> bool:
        """Whether a run ever started here (it wrote its settings or committed an epoch)."""
        return self.holds_run() or (self.path / "config.json").is_file()

    @classmethod
    def for_resume(cls, path: str | os.PathLike[str]) -> tuple[RunDir, Path]:
        """The run directory of ``path`` (a run directory or its ``last.pt``) and the file to resume from."""
        path = Path(path)
        if path.is_dir():
            run = cls(path)
            if committed_path(run.last).is_file():
                return run, run.last
            holder = holder_of(path)
            if holder is not None:
                raise ValueError(f"--resume {str(path)!r}: its run is still going ({holder}); it has not finished "
                                 "an epoch yet")
            if run.was_run_dir():
                raise FileNotFoundError(
                    f"no checkpoint to resume in {str(path)!r} (no last.pt): the run stopped before its first "
                    "epoch ended; start it again without --resume"
                )
            raise FileNotFoundError(f"--resume {str(path)!r} is not a run directory{_what_is_inside(path)}")
        if committed_path(path).is_file():
            return cls(path.parent), path
        raise FileNotFoundError(f"--resume {str(path)!r}: no such run directory or checkpoint file")

    def prepare(self, resuming: bool) -> list[str]:
        """Create and lock the directory, finish or discard interrupted writes; refuse to start over a run.

        Returns:
            names of the temporary files removed.

        Raises:
            DirectoryBusy (a ValueError): another live process holds the directory.
        """
        check_out_dir(self.path)
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock = DirectoryLock(self.path)
        self.lock.acquire()
        try:
            if not resuming and self.holds_run():
                raise ValueError(
                    f"{str(self.path)!r} already holds a training run (last.pt); continue it with "
                    f"--resume {self.path} or choose another --out"
                )
            return recover_file_set(self.path)
        except BaseException:
            self.release()
            raise

    @property
    def lock_notice(self) -> str | None:
        """What :meth:`prepare` has to say about the lock (a stale one taken over, none possible), if anything."""
        lock = getattr(self, "lock", None)
        return lock.notice if lock is not None else None

    def release(self) -> None:
        """Give up the directory's lock (the run ended, failed or was interrupted)."""
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()

    def discard_if_empty(self) -> None:
        """Remove the directory if this run created it and wrote nothing (it failed while starting)."""
        self.release()
        if getattr(self, "created", False) and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def committed_epoch(self) -> int | None:
        """The epoch of the committed set (None: none), as readers see it."""
        try:
            manifest = read_manifest(self.path)
        except ValueError:
            return None
        epoch = (manifest or {}).get("epoch")
        return epoch if isinstance(epoch, int) else None

    def load_last(self, path: Path | None = None) -> dict[str, Any]:
        return load_checkpoint(path or self.last)

    def write_config(self, payload: dict[str, Any]) -> None:
        text = json.dumps(payload, indent=2, default=str) + "\n"
        atomic_write(self.path / "config.json", lambda tmp: tmp.write_text(text))

    def write_metrics(self, history: Sequence[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` from a history (on resume: exactly the epochs of ``last.pt``)."""
        text = _jsonl(history)
        atomic_write(self.path / "metrics.jsonl", lambda tmp: tmp.write_text(text))

    def commit_epoch(
        self,
        epoch: int,
        checkpoint: dict[str, Any],
        write_weights: Callable[[Path], None],
        history: Sequence[dict[str, Any]],
        best: bool,
    ) -> None:
        """Write the epoch's files as one set: last.{pt,safetensors}, metrics.jsonl and, if ``best``, best.*."""
        text = _jsonl(history)
        writers: dict[str, Callable[[Path], None]] = {}
        if best:
            writers["best.pt"] = lambda tmp: torch_save(checkpoint, tmp)
            writers["best.safetensors"] = write_weights
        writers["last.pt"] = lambda tmp: torch_save(checkpoint, tmp)
        writers["last.safetensors"] = write_weights
        writers["metrics.jsonl"] = lambda tmp: tmp.write_text(text)
        write_file_set(self.path, writers, {"epoch": epoch})

    def manifest(self) -> dict[str, Any] | None:
        return read_manifest(self.path)


def _what_is_inside(path: Path) -> str:
    """", it is empty" / ", it holds the run directories 'a', 'b'; resume one of them" / " (no config.json ...)"."""
    try:
        entries = sorted(path.iterdir())
    except OSError:
        return ""
    if not entries:
        return ": it is empty"
    runs = [entry for entry in entries if entry.is_dir() and RunDir(entry).was_run_dir()]
    if runs:
        names = ", ".join(repr(str(run)) for run in runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
        return f" but a folder of runs ({names}); resume one of them"
    return " (no config.json, manifest.json or last.pt in it); give the --out directory of an earlier run"


def _jsonl(records: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)
