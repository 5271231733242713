"""Progress bars for long work: on a terminal only (a CI log or a pipe gets no `\\r` frames).

`ADAPLER_PROGRESS=1` forces bars on, `=0` off; otherwise they show when stderr is a terminal.
"""
from __future__ import annotations

import os
import sys


def bars_enabled() -> bool:
    forced = os.environ.get("ADAPLER_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    return sys.stderr.isatty()


def progress(iterable, desc: str, total: int | None = None, enabled: bool = True, unit: str = "it"):
    """tqdm over `iterable` on stderr (a disabled one, which draws nothing, where bars are off); `unit` names
    what is counted (the rate reads "<unit>/s")."""
    from tqdm.auto import tqdm

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    return tqdm(iterable, desc=desc, total=total, mininterval=0.1, dynamic_ncols=True, leave=False,
                file=sys.stderr, disable=not (enabled and bars_enabled()), unit=unit)


def write_line(message: str) -> None:
    """`message` on stderr, above any bar being drawn (a plain print would break the bar's line)."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()
