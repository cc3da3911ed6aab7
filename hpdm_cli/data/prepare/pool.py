"""Running per-file jobs in worker processes (`hpdm_cli.workers`: spawned, leaving Ctrl-C and SIGTERM to the main
process, dying with it): results in job order with bounded memory, and a job that kills its process skipped."""

from __future__ import annotations

from collections import deque
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator

from ...workers import new_pool, terminate
from .encode import skip

__all__ = ["ordered_results"]


def _isolated(jobs: list[dict], fn) -> Iterator[dict]:
    """Run jobs one at a time in a one-process pool; a job that kills its process is skipped (a new one starts)."""
    pool = None
    try:
        for job in jobs:
            if pool is None:
                pool = new_pool(1)
            try:
                yield pool.submit(fn, job).result()
            except BrokenProcessPool:
                terminate(pool)
                pool = None
                yield skip("the decoder crashed on this file (its worker process died)")
    finally:
        if pool is not None:
            terminate(pool)


def ordered_results(jobs: list[dict], workers: int, fn: Callable[[dict], dict]) -> Iterator[dict]:
    """Results of `fn(job)` in job order; at most 2 x workers jobs in flight (bounded memory).

    With workers > 0 the jobs run in spawned processes (recycled every 64 files, so slow leaks
    in codecs cannot grow); if a worker process dies, the jobs in flight are re-run one by
    one in fresh processes and the one that kills its process again is skipped.
    """
    if workers <= 0:
        for job in jobs:
            yield fn(job)
        return
    pool = new_pool(workers, max_tasks_per_child=64)
    pending: deque = deque()
    nxt = 0
    try:
        while pending or nxt < len(jobs):
            while len(pending) < 2 * workers and nxt < len(jobs):
                pending.append((nxt, pool.submit(fn, jobs[nxt])))
                nxt += 1
            i, fut = pending.popleft()
            try:
                res = fut.result()
            except BrokenProcessPool:
                retry = [i] + [j for j, _ in pending]
                pending.clear()
                terminate(pool)
                yield from _isolated([jobs[j] for j in retry], fn)
                pool = new_pool(workers, max_tasks_per_child=64)
                continue
            yield res
    finally:
        terminate(pool)
