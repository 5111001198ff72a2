"""Errors that the CLI turns into one clear message and an exit code.

Exit codes (documented in the README): 0 ok, 1 the operation failed, 2 the command was used wrongly,
130 interrupted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


class PackcacheError(Exception):
    """An operation failed; the message is shown to the user as it is."""

    exit_code = EXIT_FAILED


class UsageError(PackcacheError):
    """Bad input on the command line (a size, a duration, an unknown option value)."""

    exit_code = EXIT_USAGE


class NotFoundError(PackcacheError):
    """An image or layer the user named is not in the cache (or the daemon, or a registry)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        # The hint names the command that fixes it, on the same line: errors are one line.
        super().__init__(f"{message} ({hint})" if hint else message)


def not_in_cache(ref: str) -> NotFoundError:
    return NotFoundError(
        f"no image {ref!r} in the cache",
        hint=f"`packcache import {ref}` adds it from the Docker daemon, "
        f"`packcache pull {ref}` from its registry",
    )


def not_in_daemon(ref: str, host: str) -> NotFoundError:
    return NotFoundError(
        f"no image {ref} in the Docker daemon at {host}", hint=f"`docker pull {ref}` puts it there"
    )


class CorruptBlobError(PackcacheError):
    """A blob's bytes no longer hash to its name; it is never served as good."""


class IndexError_(PackcacheError):
    """The index database cannot be used (unreadable, foreign, or from a newer packcache)."""
