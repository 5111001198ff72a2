"""Turning plain results into text: aligned tables for people, JSON for programs."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime

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


def to_json(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=False)


def size(n: int) -> str:
    return humanize.naturalsize(n)  # powers of 1000, as docker prints sizes


def ago(timestamp: float, now: float | None = None) -> str:
    return humanize.naturaltime((now or time.time()) - timestamp)


def iso(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )
