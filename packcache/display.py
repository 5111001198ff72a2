"""The terminal's progress display: one transient rich display on stderr for a whole command.

It implements packcache.progress.Progress; the CLI makes one only when stderr is a terminal
(see cli.progress_display). rich's own Console honours NO_COLOR and TERM=dumb.
"""

from __future__ import annotations

import threading

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn
from rich.progress import Task as RichTask
from rich.text import Text

from packcache.progress import Unit
from packcache.render import size


class _AmountColumn(ProgressColumn):
    """Bytes as `ls` prints sizes ("12.3 MB / 45.6 MB"), steps as "2/6"."""

    def render(self, task: RichTask) -> Text:
        done = int(task.completed)
        if task.fields.get("unit") == "steps":
            return Text(f"{done}/{int(task.total or 0)}", style="progress.download")
        total = f" / {size(int(task.total))}" if task.total is not None else ""
        return Text(f"{size(done)}{total}", style="progress.download")


class _SpeedColumn(ProgressColumn):
    """Bytes per second of a byte task, as docker pull has none but people ask for."""

    def render(self, task: RichTask) -> Text:
        speed = task.finished_speed or task.speed
        if task.fields.get("unit") == "steps" or speed is None:
            return Text("")
        return Text(f"{size(int(speed))}/s", style="progress.data.speed")


class TerminalTask:
    def __init__(self, display: TerminalProgress, task_id: int, title: str) -> None:
        self._display = display
        self._id = task_id
        self._title = title
        self._ended = False

    def advance(self, n: int = 1) -> None:
        self._display.bar.advance(self._id, n)

    def describe(self, name: str) -> None:
        self._display.bar.update(self._id, description=f"{self._title}: {name}")

    def done(self) -> None:
        with self._display.lock:  # transports end tasks from several threads (parallel pulls)
            if self._ended:
                return
            self._ended = True
        self._display.bar.remove_task(self._id)

    def __enter__(self) -> TerminalTask:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done()


class TerminalProgress:
    """Every task of one command in one display, which leaves the screen when it ends."""

    def __init__(self, console: Console | None = None) -> None:
        self.lock = threading.Lock()
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            _AmountColumn(),
            _SpeedColumn(),
            console=console or Console(stderr=True),
            transient=True,
        )

    def task(self, name: str, total: int | None = None, *, unit: Unit = "bytes") -> TerminalTask:
        return TerminalTask(self, self.bar.add_task(name, total=total, unit=unit), name)

    def __enter__(self) -> TerminalProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.stop()
