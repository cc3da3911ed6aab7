"""Rich progress on stderr with one bar per key (a pyramid level, a side of an FVD comparison...)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Hashable


@contextmanager
def keyed_bars(describe: Callable[[Hashable], str], enabled: bool = True):
    """Yield progress(key, done, total) that draws one bar per key (started lazily), or None when disabled.

    Nothing is printed before the first update, so an early error leaves no half-drawn bar.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .app import err
    if not enabled:
        yield None
        return
    tasks: dict = {}
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err, transient=False)

    def update(key: Hashable, done: int, total: int) -> None:
        if not tasks:
            bar.start()
        if key not in tasks:
            tasks[key] = bar.add_task(describe(key), total=total)
        bar.update(tasks[key], completed=done, total=total)
    try:
        yield update
    finally:
        if tasks:
            bar.stop()
