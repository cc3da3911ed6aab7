"""hpdm's worker processes (`hpdm_cli.workers`): spawned, leaving signals to the main process, stopped with it."""

import os
import signal
import time

import pytest

from hpdm_cli.workers import BLAS_THREAD_VARS, spawned_pool


def test_workers_leave_signals_to_the_main_process():
    """A pool's workers ignore Ctrl-C and SIGTERM (the main process stops them) and run in a spawned process."""
    # This process's own handler, set here: a shell that starts the tests in the background ignores SIGINT for them.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with spawned_pool(1) as pool:
            assert pool.submit(signal.getsignal, signal.SIGTERM).result() == signal.SIG_IGN
            assert pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN
            assert pool._mp_context.get_start_method() == "spawn"        # never fork (torch threads: deadlocks)
            assert pool.submit(os.getpid).result() != os.getpid()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # this process keeps its own handlers
    finally:
        signal.signal(signal.SIGINT, previous)


def test_one_blas_thread_is_the_workers_alone(monkeypatch):
    """`one_blas_thread` sets the BLAS thread variables to 1 in the workers; this process's are restored after."""
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    with spawned_pool(1, one_blas_thread=True) as pool:
        assert [pool.submit(os.getenv, k).result() for k in BLAS_THREAD_VARS] == ["1"] * len(BLAS_THREAD_VARS)
    assert os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ
    with spawned_pool(1) as pool:
        assert pool.submit(os.getenv, "OMP_NUM_THREADS").result() == "7"


def test_an_exception_stops_the_workers_at_once():
    """Leaving the block by an exception kills the workers instead of waiting for their queued work."""
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with spawned_pool(1) as pool:
            pool.submit(os.getpid).result(timeout=60)                  # the worker is up
            busy = pool.submit(time.sleep, 120)                        # and busy for two minutes
            while not busy.running():                                  # (handed to the worker: not cancellable)
                time.sleep(0.01)
            procs = list(pool._processes.values())
            raise KeyboardInterrupt
    for p in procs:
        p.join(timeout=30)
        assert not p.is_alive()
    assert time.monotonic() - t0 < 100                                 # the 120-s sleep was not waited for
