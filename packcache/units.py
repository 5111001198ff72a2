"""Parsing sizes and durations the way docker and humanize users write them."""

from __future__ import annotations

import re

from packcache.errors import UsageError

# Decimal suffixes (K, M, G, T, P and KB, MB, ...) are powers of 1000, as humanize prints them;
# binary suffixes (KiB, MiB, ...) are powers of 1024. A bare number is bytes.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "p": 1000**5,
    "pb": 1000**5,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "pib": 1024**5,
}
MAX_SIZE = 2**63 - 1  # the largest integer SQLite stores
# re.ASCII: \d would also match the digits of other scripts (fullwidth, Arabic-Indic, ...),
# which Decimal and float accept.
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$", re.ASCII)

SIZE_HELP = (
    "SIZE is bytes or a number with a unit: K, M, G, T (also KB, MB, GB, TB) are powers of 1000; "
    "KiB, MiB, GiB, TiB are powers of 1024. Examples: 20G, 20GB, 20GiB, 500M, 1.5T, 1048576."
)

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])", re.ASCII)

DURATION_HELP = (
    "DURATION is a number with a unit s, m, h, d or w, or several: 90m, 12h, 7d, 2w, 1d12h."
)


def parse_size(text: str) -> int:
    """Return the number of bytes that `text` (e.g. "20G", "1.5TiB", "500000") stands for."""
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise UsageError(f"invalid size {text!r}. {SIZE_HELP}")
    from decimal import Decimal  # imported here: most commands parse no size

    size = int(Decimal(match.group(1)) * _SIZE_UNITS[unit])  # exact: no float overflow
    if size > MAX_SIZE:
        raise UsageError(f"size {text!r} is too large (at most {MAX_SIZE} bytes)")
    return size


def parse_duration(text: str) -> float:
    """Return the seconds that `text` (e.g. "90m", "7d", "1d12h") stands for."""
    compact = text.strip().lower()
    parts = _DURATION_RE.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise UsageError(f"invalid duration {text!r}. {DURATION_HELP}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
