"""How long operations say how far they are, without knowing who (if anyone) is watching.

A transport or operation takes a `Progress` (default `NO_PROGRESS`), opens a `Task` for each
piece of long work (a layer downloading, a `docker save` stream, a step of create-builder) and
advances it as bytes or steps go by. The CLI passes a terminal display (packcache/render.py);
everyone else gets the no-op. See docs/design.md, "Progress".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO, Literal, Protocol

Unit = Literal["bytes", "steps"]


class Task(Protocol):
    """One piece of work being shown; also a context manager that ends it."""

    def advance(self, n: int = 1) -> None:
        """`n` more bytes (or steps) done."""

    def describe(self, name: str) -> None:
        """What the task is doing now (the next step's name)."""

    def done(self) -> None:
        """The work is over: the task leaves the display. Calling it twice is harmless."""

    def __enter__(self) -> Task: ...

    def __exit__(self, *exc_info: object) -> None: ...


class Progress(Protocol):
    def task(self, name: str, total: int | None = None, *, unit: Unit = "bytes") -> Task:
        """Start showing `name`: `total` bytes (or steps) expected, None if unknown."""


class _NoTask:
    def advance(self, n: int = 1) -> None:
        pass

    def describe(self, name: str) -> None:
        pass

    def done(self) -> None:
        pass

    def __enter__(self) -> _NoTask:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


NO_TASK: Task = _NoTask()


class NoProgress:
    """Shows nothing: what library callers, tests and non-terminal runs get."""

    def task(self, name: str, total: int | None = None, *, unit: Unit = "bytes") -> Task:
        return NO_TASK


NO_PROGRESS: Progress = NoProgress()


class CountingReader:
    """A file object's reads passed through, each advancing `task` by its length; closing it
    closes the source and ends the task."""

    def __init__(self, source: BinaryIO, task: Task) -> None:
        self._source = source
        self._task = task

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self._task.advance(len(data))
        return data

    def close(self) -> None:
        try:
            self._source.close()
        finally:
            self._task.done()

    def __getattr__(self, name: str) -> object:
        return getattr(self._source, name)  # peek where the source has it, closed, ...

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def counted(chunks: Iterable[bytes], task: Task) -> Iterator[bytes]:
    """`chunks` as they are, each advancing `task`; the task ends with the iteration."""
    with task:
        for chunk in chunks:
            task.advance(len(chunk))
            yield chunk
