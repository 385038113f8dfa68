"""The ``botnet`` command: a thin layer over the library.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``; modules are discovered, so adding a command means
adding a file. Heavy imports stay inside each command's ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import signal
import sys

from ..runtime.distributed import PeerFailed

__all__ = ["main", "build_parser", "CommandError"]


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad option reported in one line (what was expected, what came), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(message: object) -> str:
    text = str(message)
    if "Original Traceback" in text:
        # Raised in a DataLoader worker: torch re-raises it with the worker's traceback in the
        # message; the user needs its last line (e.g. which file did not decode), not the frames.
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        text = re.sub(r"^[A-Za-z_][\w.]*(Error|Exception): ", "", last)
    return " ".join(text.split())


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = ArgumentParser(
        prog="botnet", description="Bottleneck Transformers (BoTNet): build, inspect, train and use."
    )
    parser.add_argument("--version", action="version", version=f"botnet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. SIGINT / SIGTERM end it with one line and 130 / 143 (:mod:`botnet.runtime.interrupts`)."""
    from ..runtime import interrupts

    with interrupts.installed():
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
        except KeyboardInterrupt as err:  # still importing the commands: nothing was written
            signum = getattr(err, "signum", signal.SIGINT)
            print(f"botnet: interrupted by {interrupts.signal_name(signum)} while starting; nothing was written",
                  file=sys.stderr)
            return interrupts.exit_code(signum)
        if not getattr(args, "run", None):
            parser.print_help()
            return 2
        try:
            return int(args.run(args) or 0)
        except KeyboardInterrupt as err:
            # A trainer's Interrupted says what it saved and how to resume; the other commands write
            # atomically, so they leave nothing half-written to mention.
            signum = getattr(err, "signum", signal.SIGINT)
            text = str(err) if isinstance(err, interrupts.Interrupted) else ""
            return _interrupted(args, signum, text)
        except PeerFailed:
            return 2  # rank 0 printed the reason
        except Exception as err:
            if interrupts.received() is not None:  # caused by the stop (e.g. a DataLoader worker it ended)
                return _interrupted(args, interrupts.received(), "")
            if isinstance(err, (CommandError, ValueError, OSError, FloatingPointError)):
                # User-facing failures: bad values, missing or damaged files, unwritable paths, a full
                # disk, a diverging loss. Each is one line that names the cause; anything else is a
                # bug and keeps its traceback.
                print(f"{_prog(args)}: error: {_one_line(err)}", file=sys.stderr)
                return 2
            if type(err).__name__ == "OutOfMemoryError":
                print(f"{_prog(args)}: error: out of memory ({_one_line(err)[:200]}); lower --batch-size or the "
                      "image size", file=sys.stderr)
                return 2
            raise


def _interrupted(args: argparse.Namespace, signum: int, text: str) -> int:
    from ..runtime import interrupts
    from ..runtime.distributed import launched_as_main

    if not text.startswith("interrupted"):
        text = f"interrupted by {interrupts.signal_name(signum)}"
    if launched_as_main():  # under torchrun every rank gets the signal: the job says it once
        print(f"{_prog(args)}: {_one_line(text)}", file=sys.stderr)
    return interrupts.exit_code(signum)


def _prog(args: argparse.Namespace) -> str:
    return f"botnet {args.command}"
