"""Up-front checks of the benchmarks' options: every bad value is a one-line TideError before any work starts
(a benchmark may run for minutes, or in worker processes, before it would otherwise meet the value)."""
from __future__ import annotations

import math
from pathlib import Path

from offload.errors import TideError


def at_least(option: str, value: int | None, minimum: int = 1) -> None:
    """``value`` (None: not given) must be >= ``minimum``."""
    if value is not None and value < minimum:
        raise TideError(f"{option} must be an integer >= {minimum}, got {value}")


def output_file(option: str, name: str | None) -> None:
    """An output file must not be an existing folder: found out now, not after the run when it is written."""
    if name is not None and Path(name).is_dir():
        raise TideError(f"{option} {name}: is a directory, not a file")


def fraction(option: str, text: str) -> float:
    """A number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise TideError(f"{option}: {text!r} is not a number") from None
    if not (math.isfinite(value) and 0 < value <= 1):
        raise TideError(f"{option}: a fraction must be in (0, 1], got {text}")
    return value
