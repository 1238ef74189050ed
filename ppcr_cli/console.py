"""Two consoles: results go to stdout, logs, progress, warnings and errors to stderr."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


@contextlib.contextmanager
def one_line_warnings(enabled: bool = True) -> Iterator[None]:
    """Show each Python warning raised inside as one ``warning: <first line>`` on stderr, once,
    instead of Python's ``file:line: Category: message`` plus the source line (noise for a user;
    with ``enabled=False``, e.g. under PPCR_DEBUG=1, warnings keep their full form)."""
    import warnings

    if not enabled:
        yield
        return
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        from rich.markup import escape

        lines = str(message).strip().splitlines()
        text = lines[0] if lines else category.__name__
        if text not in shown:  # the same image read twice (checked, then predicted) warns once
            shown.add(text)
            err.print(f"[yellow]warning:[/] {escape(text)}", soft_wrap=True, emoji=False)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
