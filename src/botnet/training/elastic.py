"""Resuming by itself: ``--resume auto`` and torchrun's elastic restarts.

torchrun (``torch.distributed.elastic``) restarts the whole group with the
same command when a worker dies (``--max-restarts N``), and tells the new
workers which restart they are in ``TORCHELASTIC_RESTART_COUNT``. A
restarted ``botnet train`` must then continue the run in ``--out`` from its
last committed epoch instead of refusing to start over it: that is
``--resume auto``, which a restart implies. No launcher of our own: the
rendezvous, the failure detection and the restarts are torchrun's.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime.store import committed_path

__all__ = ["resolve_resume", "restart_count"]


def restart_count() -> int:
    """Which restart of the torchrun group this process belongs to (0: the first start, or no torchrun)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def _max_restarts() -> int:
    try:
        return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    except ValueError:
        return 0


def resolve_resume(resume: str | os.PathLike[str] | None, out: str | os.PathLike[str] | None) -> str | None:
    """The run to resume: ``resume`` itself, or for ``"auto"`` (and after an elastic restart) ``out`` if it
    holds a committed epoch, else None (a fresh start in ``out``).

    Raises:
        ValueError: ``"auto"``, a restart, or ``--max-restarts`` without ``out`` (a restarted group
            could not find the run: the default directory name carries the start time).
    """
    if resume is not None and str(resume) != "auto":
        return str(resume)
    if resume is None and restart_count() == 0:
        if out is None and _max_restarts() > 0:
            raise ValueError("torchrun --max-restarts restarts the group with the same command: give --out, so "
                             "that a restarted group finds the run and resumes it")
        return None
    if out is None:
        why = "--resume auto" if resume is not None else f"torchrun restart {restart_count()}"
        raise ValueError(f"{why} needs --out: the run directory to continue (or to start in)")
    return str(out) if committed_path(Path(out) / "last.pt").is_file() else None
