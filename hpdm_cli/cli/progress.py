"""Rich progress bars on stderr: one bar per key (a pyramid level, a side of an FVD comparison...), and a bar of
files with skips and ETA (`hpdm prepare`)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Hashable, Optional

from .console import err

PROGRESS_HELP = "Live progress bars on stderr (default: on a terminal, off when stderr goes to a file or pipe)."


def bars_wanted(progress: Optional[bool]) -> bool:
    """--progress/--no-progress as given, else whether stderr is a terminal (a batch job's log gets no bar frames)."""
    return sys.stderr.isatty() if progress is None else progress


@contextmanager
def keyed_bars(describe: Callable[[Hashable], str], enabled: bool = True, *, lines: bool = False):
    """Yield progress(key, done, total) that draws one bar per key (started lazily); when disabled, one that
    prints a line as each key finishes if `lines` (a batch job's log), else None.

    Nothing is printed before the first update, so an early error leaves no half-drawn bar.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:
        yield finished_lines(describe) if lines else None
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


def finished_lines(describe: Callable[[Hashable], str]) -> Callable[[Hashable, int, int], None]:
    """progress(key, done, total) that prints "<key>: done/total done at S s" on stderr once, when a key finishes
    (S: seconds since this was made; keys may interleave, as levels do over several batches)."""
    import time
    t0, said = time.perf_counter(), set()

    def update(key: Hashable, done: int, total: int) -> None:
        if done >= total and key not in said:
            err.print(f"{describe(key)}: {done}/{total} done at {time.perf_counter() - t0:.1f} s", highlight=False)
            said.add(key)
    return update


@contextmanager
def files_bar(label: str, enabled: bool = True):
    """Yield update(state) drawing a bar of files: counts, skips, elapsed time, ETA and the current file.

    `state` holds done, total, skipped and optionally current; the bar is gone once the body ends.
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                   TextColumn("[yellow]{task.fields[skipped]} skipped"), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[current]}"),
                   console=err, transient=True, disable=not enabled)
    task = bar.add_task(label, total=None, skipped=0, current="")

    def update(state: dict) -> None:
        cur = state.get("current") or ""
        bar.update(task, completed=state["done"], total=state["total"], skipped=state["skipped"],
                   current=cur if len(cur) <= 40 else "..." + cur[-37:])
    with bar:
        yield update
