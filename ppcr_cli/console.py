"""Two consoles: results go to stdout, logs, progress and errors to stderr."""

from __future__ import annotations

from rich.console import Console

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def progress_bars():
    """An empty rich ``Progress`` on stderr (rendered only on a terminal); add one task per bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def progress(description: str, total: int | None):
    """A rich progress bar on stderr (rendered only on a terminal)."""
    bar = progress_bars()
    task = bar.add_task(description, total=total)
    return bar, (lambda advance=1: bar.advance(task, advance))
