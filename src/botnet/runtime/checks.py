"""Checking what a user gives before any work: option values and output paths.

Value checks take a value (a string from the command line or a YAML file,
or a Python value) and return it converted, or raise
``ValueError("must be ..., got ...")``; callers prefix the option's name.
The settings dataclasses (:mod:`botnet.training.config`) and every
command's options use them, so one value has one check everywhere.

Out-path checks run before any data or model is built, so a typo in
``--out`` costs nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "Check",
    "boolean",
    "check_out_dir",
    "check_out_file",
    "choice",
    "finite_float",
    "fraction",
    "integer",
    "nonneg_float",
    "nonneg_int",
    "positive_float",
    "positive_int",
    "text",
]

Check = Callable[[Any], Any]


# --------------------------------------------------------------------------- values


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    try:
        number = kind(value) if not isinstance(value, str) or kind is float else int(value, 10)
    except (TypeError, ValueError):
        raise ValueError(f"must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"must be an integer, got {value!r}")
    return number


def integer(value: Any) -> int:
    """Any integer: an int, a float without a fraction, or its decimal text (not a bool)."""
    return _number(value, int)


def positive_int(value: Any) -> int:
    number = _number(value, int)
    if number < 1:
        raise ValueError(f"must be an integer >= 1, got {value!r}")
    return number


def nonneg_int(value: Any) -> int:
    number = _number(value, int)
    if number < 0:
        raise ValueError(f"must be an integer >= 0, got {value!r}")
    return number


def finite_float(value: Any) -> float:
    number = _number(value, float)
    if not math.isfinite(number):
        raise ValueError(f"must be a finite number, got {value!r}")
    return number


def positive_float(value: Any) -> float:
    number = finite_float(value)
    if number <= 0:
        raise ValueError(f"must be a finite number > 0, got {value!r}")
    return number


def nonneg_float(value: Any) -> float:
    number = finite_float(value)
    if number < 0:
        raise ValueError(f"must be a finite number >= 0, got {value!r}")
    return number


def fraction(low: float = 0.0, high: float = 1.0, *, low_open: bool = False, high_open: bool = True) -> Check:
    """A check for numbers in [low, high) (ends open or closed as asked)."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"

    def check(value: Any) -> float:
        number = finite_float(value)
        if (number <= low if low_open else number < low) or (number >= high if high_open else number > high):
            raise ValueError(f"must be in {left}{low:g}, {high:g}{right}, got {value!r}")
        return number

    check.__name__ = f"fraction{left}{low:g},{high:g}{right}"
    return check


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def boolean(value: Any) -> bool:
    """A bool, or its text as a flag or YAML writes it: true/yes/on/1 or false/no/off/0 (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ValueError(f"must be true or false, got {value!r}")


def text(value: Any) -> str:
    """Text (names, paths): a str, or a path object as its str.

    Nothing else is turned into text: a number, a bool or a date here was
    typed as something else (YAML files keep what was written as text, see
    :func:`botnet.training.config.load_config_file`, so this only meets
    values built in Python), and its str() need not be what was meant.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)  # type: ignore[return-value]
    raise ValueError(f"must be text, got {_shown(value)}")


def _shown(value: Any) -> str:
    """A value and its type, for messages: ``2024 (int)``, ``[1, 2] (list)``."""
    return f"{value!r} ({type(value).__name__})"


def choice(*options: Any) -> Check:
    """A check for one of ``options`` (a command-line string "3" matches the option 3)."""

    def check(value: Any) -> Any:
        for option in options:
            if value == option or (isinstance(value, str) and value == str(option)):
                return option
        raise ValueError(f"must be one of {', '.join(map(str, options))}, got {value!r}")

    check.__name__ = "choice"
    check.choices = options  # type: ignore[attr-defined]
    return check



# --------------------------------------------------------------------------- output paths


def check_out_dir(path: str | os.PathLike[str]) -> Path:
    """Raise a one-line ValueError now if a run directory cannot be created or written at ``path``.

    Called before any data or model is built, so a typo costs nothing.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"--out {str(path)!r} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"--out {str(path)!r} is not writable")
        return path
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out {str(path)!r} cannot be created: {str(parent)!r} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {str(path)!r} cannot be created: {str(parent)!r} is not writable")
    return path


def check_out_file(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Raise a one-line ValueError now if a file cannot be written at ``path`` (its folder is created later)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a directory; give a file name")
    existing = path.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {str(path)!r} cannot be written: {str(existing)!r} is a file, not a directory")
    writable = os.access(path, os.W_OK) if path.exists() else os.access(existing, os.W_OK | os.X_OK)
    if not writable:
        raise ValueError(f"{option} {str(path)!r} cannot be written: permission denied")
    return path
