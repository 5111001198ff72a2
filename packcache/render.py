"""Turning plain results into text: aligned tables for people, JSON for programs."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache

import humanize


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces, like `docker images`."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [headers, *rows]:
        lines.append(
            "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def count(n: int, noun: str) -> str:
    """'1 layer', '3 layers'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def to_json(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


_DECIMAL_SUFFIXES = ("kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB", "RB", "QB")


def size(n: int) -> str:
    """humanize.naturalsize(n) (powers of 1000, as docker prints sizes), computed directly.

    humanize spends 5 us a call in its translation layer; `du` of 10,000 images formats 30,000
    sizes, so that alone took 0.15 s of its 0.3 s budget. tests/test_render.py checks this
    gives humanize's text for every magnitude.
    """
    if n < 1000:
        return humanize.naturalsize(n)
    exp = min(int(math.log(n, 1000)), len(_DECIMAL_SUFFIXES))
    if exp < len(_DECIMAL_SUFFIXES) and float(f"{n / 1000**exp:.1f}") >= 1000:
        exp += 1  # 999,999 bytes reads "1.0 MB", not "1000.0 kB"
    return f"{n / 1000**exp:.1f} {_DECIMAL_SUFFIXES[exp - 1]}"


def ago(timestamp: float, now: float | None = None) -> str:
    return _ago(_coarse((now or time.time()) - timestamp))


def _coarse(seconds: float) -> int:
    """Round an age to the unit it is shown in, so equal texts are computed once."""
    for unit in (86400, 3600, 60):
        if seconds >= unit:
            return int(seconds // unit * unit)
    return int(seconds)


@lru_cache(maxsize=4096)
def _ago(seconds: int) -> str:
    return humanize.naturaltime(seconds)


def iso(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )
