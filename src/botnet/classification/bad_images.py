"""Unreadable images met while training: gathered from every rank and worker, reported once, kept in the run.

Nothing is decoded before training (see :mod:`.data`); a file that fails to
decode is found when a loader worker reads it, in some process of some node.
The datasets append one JSON line per unreadable file to a local file of
their process (``skip_log``; every worker of the process appends whole
lines to the same file). After every epoch, every rank reads and empties its
file, rank 0 gathers all of them (one ``all_gather_object`` per epoch, a
few bytes when nothing failed), prints each file it has not reported before,
and rewrites ``OUT/bad_images.jsonl`` with every file found so far. A
resumed run starts from that file, so nothing is reported twice.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..runtime.distributed import DistInfo, all_gather_objects
from ..runtime.store import atomic_write

__all__ = ["BAD_IMAGES_FILE", "BadImageLog", "append_record"]

BAD_IMAGES_FILE = "bad_images.jsonl"


class BadImageLog:
    """Collects the unreadable images that ``data``'s datasets meet (see the module docstring).

    Args:
        data: an :class:`~.data.ImageData`; its train and val datasets get
            ``skip_log`` set if they have one (image folders and shards).
        dist: this process's place in the group.
        run_dir: the run directory (rank 0 writes ``bad_images.jsonl`` there).
    """

    def __init__(self, data: Any, dist: DistInfo, run_dir: str | os.PathLike[str]) -> None:
        self.dist, self.path = dist, Path(run_dir) / BAD_IMAGES_FILE
        handle, name = tempfile.mkstemp(prefix=f"botnet-bad-images-rank{dist.rank}-", suffix=".jsonl")
        os.close(handle)
        self.local = Path(name)
        atexit.register(self._remove_local)
        for part in (data.train, data.val):
            if hasattr(part, "skip_log"):
                part.skip_log = str(self.local)
        self.seen: dict[str, dict[str, Any]] = {}
        if dist.is_main and self.path.is_file():  # a resumed run: what it reported already
            for record in _records(self.path.read_text()):
                self.seen.setdefault(record["path"], record)

    def _remove_local(self) -> None:
        with contextlib.suppress(OSError):
            self.local.unlink()

    def collect(self, say: Callable[[str], None]) -> int:
        """Gather every rank's findings since the last call (collective: every rank calls it).

        Rank 0 prints each newly found file once with ``say`` and rewrites
        ``bad_images.jsonl``. Returns the number of new files (on every rank).
        """
        text = self.local.read_text() if self.local.is_file() else ""
        self.local.write_text("")  # the loader workers of the epoch are gone: nothing appends now
        gathered = all_gather_objects(_records(text), self.dist)
        new = []
        for records in gathered:
            for record in records:  # type: ignore[union-attr]
                if record["path"] not in self.seen:
                    self.seen[record["path"]] = record
                    new.append(record)
        if new and self.dist.is_main:
            for record in new:
                say(f"[yellow]skipped unreadable image[/] {record['path']} (label {record['label']}): "
                    f"{record['reason']}")
            lines = "".join(json.dumps(record) + "\n" for record in self.seen.values())
            atomic_write(self.path, lambda tmp: tmp.write_text(lines))
        return len(new)


def append_record(log: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append an unreadable sample's record (``path``, ``label``, ``reason``, ...) to ``log`` as one JSON line.

    One short append (O_APPEND) per line: the loader workers of a process share the file and each line
    arrives whole.
    """
    with open(log, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _records(text: str) -> list[dict[str, Any]]:
    """The records of a log's JSON lines: ``path`` (a shard sample's is ``SHARD:KEY``), ``label``, ``reason``."""
    return [{key: record[key] for key in ("path", "label", "reason")}
            for record in map(json.loads, filter(str.strip, text.splitlines()))]
