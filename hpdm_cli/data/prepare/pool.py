"""Running per-file jobs in spawned worker processes: results in job order with bounded memory, workers that
leave Ctrl-C and SIGTERM to the main process and die with it, and a job that kills its process skipped."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from typing import Callable, Iterator

from .encode import skip

__all__ = ["ordered_results", "worker_init"]


def worker_init(parent: int = 0) -> None:
    """Workers leave Ctrl-C and SIGTERM to the main process, which stops them, and die with it.

    If the main process is killed outright (SIGKILL, OOM killer) nobody stops them: on Linux
    the kernel sends them SIGKILL when it dies (PR_SET_PDEATHSIG); everywhere, a watchdog
    thread exits the worker once its parent process is gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if not parent:
        return
    if sys.platform.startswith("linux"):
        try:
            import ctypes  # noqa: PLC0415
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="hpdm-parent-watchdog", daemon=True).start()


def _watch_parent(parent: int) -> None:
    """Exit this worker process as soon as its parent is gone (it is re-parented)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def _terminate(pool) -> None:
    """Stop a process pool now (on interrupt or crash): kill its workers, cancel what is queued."""
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            p.kill()  # SIGKILL: workers ignore SIGTERM (they leave it to this process)
        except Exception:  # noqa: BLE001
            pass
    manager = getattr(pool, "_executor_manager_thread", None)        # (shutdown forgets it)
    pool.shutdown(wait=False, cancel_futures=True)
    # Let the pool's manager thread finish now: it closes the pool's wake-up pipe as it ends, and at
    # interpreter exit concurrent.futures writes to every pipe not yet closed; a close racing that
    # write printed "OSError: Bad file descriptor" and a traceback after a clean SIGTERM stop.
    if manager is not None and manager is not threading.current_thread():
        manager.join(timeout=10)


def _isolated(jobs: list[dict], ctx, fn) -> Iterator[dict]:
    """Run jobs one at a time in a one-process pool; a job that kills its process is skipped (a new one starts)."""
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415
    from concurrent.futures.process import BrokenProcessPool  # noqa: PLC0415
    pool = None
    try:
        for job in jobs:
            if pool is None:
                pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=worker_init, initargs=(os.getpid(),))
            try:
                yield pool.submit(fn, job).result()
            except BrokenProcessPool:
                _terminate(pool)
                pool = None
                yield skip("the decoder crashed on this file (its worker process died)")
    finally:
        if pool is not None:
            _terminate(pool)


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
    import multiprocessing  # noqa: PLC0415
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415
    from concurrent.futures.process import BrokenProcessPool  # noqa: PLC0415
    ctx = multiprocessing.get_context("spawn")

    def new_pool():
        return ProcessPoolExecutor(workers, mp_context=ctx, initializer=worker_init, initargs=(os.getpid(),),
                                   max_tasks_per_child=64)

    pool = new_pool()
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
                _terminate(pool)
                yield from _isolated([jobs[j] for j in retry], ctx, fn)
                pool = new_pool()
                continue
            yield res
    finally:
        _terminate(pool)
