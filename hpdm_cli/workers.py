"""Worker processes for hpdm's CPU-bound jobs (rendering, encoding, measuring clips, decoding files): one way to
start them, one way to stop them.

* Started with "spawn", never "fork": forking a process that already runs torch or OpenMP threads can
  deadlock in the child (`spawn_context`).
* Workers leave Ctrl-C and SIGTERM to the main process, which stops them, and die with it (`worker_init`):
  `timeout`, Slurm and torchrun signal the whole process group, and a worker that died of it would make the
  main process fail before it could clean up.
* `spawned_pool` is a pool for a `with` block: shut down in order when the block ends, stopped at once
  (`terminate`) when it is left by an exception or an interrupt.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Iterator

__all__ = ["spawn_context", "worker_init", "terminate", "new_pool", "spawned_pool", "BLAS_THREAD_VARS"]

# The environment variables that BLAS/OpenMP libraries read for their thread count as they load.
BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def spawn_context():
    """The multiprocessing context of every hpdm worker pool: "spawn" (see the module's docstring)."""
    return multiprocessing.get_context("spawn")


def worker_init(parent: int = 0) -> None:
    """Workers leave Ctrl-C and SIGTERM to the main process, which stops them, and die with it.

    If the main process is killed outright (SIGKILL, OOM killer) nobody stops them: on Linux
    the kernel sends them SIGKILL when it dies (PR_SET_PDEATHSIG); on POSIX systems a watchdog
    thread also exits the worker once it is re-parented (not on Windows, where a parent's pid stays).
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


def terminate(pool: ProcessPoolExecutor) -> None:
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


def new_pool(workers: int, **options) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes started by `worker_init` (`options`: ProcessPoolExecutor's others)."""
    return ProcessPoolExecutor(workers, mp_context=spawn_context(), initializer=worker_init,
                               initargs=(os.getpid(),), **options)


@contextmanager
def spawned_pool(workers: int, *, one_blas_thread: bool = False, **options) -> Iterator[ProcessPoolExecutor]:
    """`new_pool` for a `with` block: shut down when it ends, stopped at once when an exception leaves it.

    `one_blas_thread`: the workers' BLAS/OpenMP use one thread each (a core per worker, not per library).
    """
    saved = {k: os.environ.get(k) for k in BLAS_THREAD_VARS}
    if one_blas_thread:
        os.environ.update({k: "1" for k in BLAS_THREAD_VARS})     # read by the workers as they start
    try:
        pool = new_pool(workers, **options)
        try:
            yield pool
        except BaseException:
            terminate(pool)
            raise
        pool.shutdown()
    finally:
        if one_blas_thread:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
