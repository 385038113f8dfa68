"""The exit rule of commands that read many image files (``botnet predict``, ``botnet detect predict``).

Each input file gives one record, and a file that cannot be read (missing,
not an image, truncated) is a record with an ``error`` instead of stopping
the others: a folder of 10,000 photos with one damaged file still gives
9,999 results, and the output says which file failed and why. The exit
status then tells a script whether there is anything to use:

* 0: at least one file gave a result; when some did not, one line on stderr
  counts them (they are listed in the output with their reason);
* 2: no file gave a result (one line, after the output listing each), or no
  input named any file at all (one line, nothing else).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from . import CommandError

__all__ = ["exit_status"]


def exit_status(prog: str, records: Sequence[dict[str, Any]]) -> int:
    """0 if any record has no ``error`` (a warning line counts the others), else a CommandError (exit 2)."""
    failed = [record for record in records if record.get("error")]
    if failed and len(failed) == len(records):
        more = f"; and {len(failed) - 1} more" if len(failed) > 1 else ""
        raise CommandError(f"no image could be read ({len(failed)} listed in the output): {failed[0]['error']}{more}")
    if failed:
        print(f"{prog}: warning: {len(failed)} of {len(records)} inputs could not be read (listed in the output "
              "with the reason)", file=sys.stderr)
    return 0
