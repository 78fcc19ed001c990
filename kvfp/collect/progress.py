"""The progress bar of a collect run: units done, generated tokens per second, time left."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class UnitProgress:
    """A rich progress bar on stderr over units; silent when ``enabled`` is false or stderr is not
    a terminal (tests, logs). The rate counts tokens this run generated, not units it skipped."""

    def __init__(self, total: int, done: int, enabled: bool = True, label: str = "collect"):
        console = Console(stderr=True)
        self.total, self.label = total, label
        self._tokens, self._t0 = 0, time.perf_counter()
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("units · {task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"),
                             TimeRemainingColumn(), console=console, disable=not (enabled and console.is_terminal))
        self._task = self._bar.add_task(label, total=total, completed=done, rate="— tok/s")

    def __enter__(self) -> UnitProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.stop()

    def set_done(self, done: int, tokens: int = 0, what: str | None = None) -> None:
        """``done`` units are finished; this run generated ``tokens`` more since the last call."""
        self._tokens += tokens
        rate = self._tokens / max(time.perf_counter() - self._t0, 1e-9)
        self._bar.update(self._task, completed=done, rate=f"{rate:,.0f} tok/s",
                         description=f"{self.label} {what}" if what else self.label)
