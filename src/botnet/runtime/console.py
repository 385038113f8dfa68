"""Console output of a run: one-line messages and a progress bar, from rank 0 only."""

from __future__ import annotations

from typing import Any

__all__ = ["Progress", "console", "say"]


def console(stderr: bool = False) -> Any:
    """A rich Console: the terminal's width, or 120 columns when writing to a file or pipe."""
    from rich.console import Console

    probe = Console(stderr=stderr)
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=None if probe.is_terminal else 120)


def say(message: str, enabled: bool = True) -> None:
    """Print one (rich markup) line, when ``enabled`` (rank 0)."""
    if enabled:
        console().print(message)


class Progress:
    """A transient rich progress bar with free-text status, shown only on a terminal and when enabled.

    Logs and pipes get no live bar (the per-epoch lines remain).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.bar = None
        self.task = None
        out = console()
        if enabled and out.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=out, transient=True,
            )

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    @property
    def active(self) -> bool:
        return self.bar is not None

    def start(self, description: str, total: int) -> None:
        if self.bar is not None:
            self.task = self.bar.add_task(description, total=total, status="")

    def update(self, advance: int = 1, status: str | None = None) -> None:
        if self.bar is not None and self.task is not None:
            fields = {} if status is None else {"status": status}
            self.bar.update(self.task, advance=advance, **fields)

    def stop(self) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
