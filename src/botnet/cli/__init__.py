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
import sys

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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (CommandError, ValueError, OSError, FloatingPointError) as err:
        # User-facing failures: bad values, missing or damaged files, unwritable paths, a
        # diverging loss. Each is one line that names the cause; anything else is a bug and
        # keeps its traceback.
        print(f"{_prog(args)}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if type(err).__name__ != "OutOfMemoryError":
            raise
        print(f"{_prog(args)}: error: out of memory ({_one_line(err)[:200]}); lower --batch-size or the image size",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_prog(args)}: interrupted", file=sys.stderr)
        return 130


def _prog(args: argparse.Namespace) -> str:
    return f"botnet {args.command}"
