"""One progress bar with a count, a rate and an ETA, on stderr: the shape every long command uses."""

from __future__ import annotations

from contextlib import contextmanager

from kvfp.cli.errors import err_console


@contextmanager
def progress_bar(label: str, unit: str, *, quiet: bool = False):
    """Yields ``progress(done, total)``; the bar appears at the first call (nothing to do, no bar)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err_console,
                   disable=quiet, transient=False)
    task = None

    def progress(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task(label, total=total, rate="")
        else:
            bar.update(task, total=total)
        elapsed = bar.tasks[0].elapsed or 0.0
        rate = f"{done / elapsed:.2f} {unit}/s" if done and elapsed else ""
        bar.update(task, completed=done, rate=rate)

    with bar:
        yield progress
