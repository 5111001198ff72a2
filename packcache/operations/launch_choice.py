"""Which of pack's launch caches an operation may read, and the names reports give where an
app layer came from: values only, so a command that reads no launch cache (a warm rebase)
need not import the reading of them (launch_layers.py)."""

from __future__ import annotations

from typing import NamedTuple

CACHE, LAUNCH_CACHE, SAVE = "cache", "launch-cache", "docker save"


class LaunchChoice(NamedTuple):
    """Which launch caches an operation may read: the daemon's (default), one named, none."""

    use: bool = True
    source: str | None = None  # a volume name or a directory


EVERY_LAUNCH_CACHE = LaunchChoice()
