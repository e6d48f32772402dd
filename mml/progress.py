"""Progress bars (rich) for long work; one place so every command looks the same."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

_console = Console(stderr=True)


@contextmanager
def progress_bar(label: str, total: int, show: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n=1)`; draws a bar on stderr when `show` (a no-op otherwise)."""
    if not show:
        yield lambda n=1: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_console, transient=False) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n=1: progress.advance(task, n)
