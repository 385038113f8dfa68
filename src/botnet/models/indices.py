"""Which feature levels to return: timm's ``indices`` convention, with clear errors."""

from __future__ import annotations

import operator
from collections.abc import Sequence

__all__ = ["take_indices"]


def take_indices(num_levels: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """Absolute, sorted-as-given level indices and the largest one.

    As timm's ``feature_take_indices``: ``None`` takes every level, an int
    ``n`` the last ``n`` levels, a sequence the levels named (negative ones
    count from the end). Levels here are the stages c2..c5 (0..3), the same
    indexing as ``feature_info`` and ``out_indices``.

    Raises:
        ValueError: an index or count out of range, or an empty sequence.
    """
    if indices is None:
        indices = num_levels
    if isinstance(indices, bool) or not isinstance(indices, (int, Sequence)):
        raise ValueError(f"indices must be None, an int or a sequence of ints, got {indices!r}")
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ValueError(f"indices={indices} asks for the last {indices} levels; expected 1 to {num_levels}")
        taken = list(range(num_levels - indices, num_levels))
    else:
        if len(indices) == 0:
            raise ValueError(f"indices is empty; expected level indices in [{-num_levels}, {num_levels - 1}]")
        taken = []
        for given in indices:
            try:
                index = operator.index(given)  # ints, numpy ints; not floats
            except TypeError:
                index = None
            if index is None or isinstance(given, bool) or not -num_levels <= index < num_levels:
                raise ValueError(
                    f"feature level index {given!r} is out of range; expected an int in "
                    f"[{-num_levels}, {num_levels - 1}] (0 is c2, {num_levels - 1} is the last stage)"
                )
            taken.append(index % num_levels)
    return taken, max(taken)
