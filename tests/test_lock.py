"""The directory lock of `hpdm_cli.io.lock`: one holder at a time, released however the holder exits."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpdm_cli.io.lock import LOCK_NAME, hold_lock, lock_holder

ROOT = Path(__file__).resolve().parents[1]


class Refused(Exception):
    pass


def _holder(directory: Path, fork_child: bool = False) -> subprocess.Popen:
    """A process that takes the lock, prints its pid (and a forked child's pid) and waits on stdin."""
    code = textwrap.dedent(f"""
        import os, sys
        from hpdm_cli.io.lock import hold_lock
        with hold_lock({str(directory)!r}, "test"):
            if {fork_child}:
                child = os.fork()
                if child == 0:                  # the at-fork handler has run once fork() returns here
                    os.write(1, b"ready\\n")    # one write each: the two lines never interleave
                    sys.stdin.readline()
                    os._exit(0)
                os.write(1, str(child).encode() + b"\\n")
                os._exit(0)                     # the parent dies, its forked child lives on
            print(os.getpid(), flush=True)
            sys.stdin.readline()
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)


def test_second_holder_is_refused_with_pid_and_host(tmp_path):
    p = _holder(tmp_path)
    try:
        pid = int(p.stdout.readline())
        assert lock_holder(tmp_path)["pid"] == pid
        with pytest.raises(Refused) as e:
            with hold_lock(tmp_path, "hpdm train", error=Refused):
                pass
        msg = str(e.value)
        assert "\n" not in msg and f"pid {pid}" in msg and socket.gethostname() in msg and "hpdm train" in msg
    finally:
        p.communicate("\n")
    with hold_lock(tmp_path, "hpdm train", error=Refused):                 # released on a clean exit
        assert lock_holder(tmp_path)["pid"] == os.getpid()
    assert lock_holder(tmp_path) is None                                  # nothing stale left for a reader


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    p = _holder(tmp_path)
    int(p.stdout.readline())
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert lock_holder(tmp_path) is not None                              # its note is still there ...
    with hold_lock(tmp_path, "hpdm train", error=Refused):               # ... but the lock is free
        assert lock_holder(tmp_path)["pid"] == os.getpid()


def test_forked_child_does_not_keep_the_lock(tmp_path):
    p = _holder(tmp_path, fork_child=True)
    lines = {p.stdout.readline().strip(), p.stdout.readline().strip()}    # the child's "ready" and its pid
    child = int((lines - {"ready"}).pop())
    p.wait()
    try:
        with hold_lock(tmp_path, "hpdm train", error=Refused):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
        p.stdin.close()


def test_same_process_twice_and_file_path(tmp_path):
    with hold_lock(tmp_path / "run", "hpdm train", error=Refused):
        assert (tmp_path / "run" / LOCK_NAME).exists()
        with pytest.raises(Refused, match="already in use by this process"):
            with hold_lock(tmp_path / "run", "hpdm train", error=Refused):
                pass
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(Refused, match="is a file, not a directory"):
        with hold_lock(f, "hpdm train", error=Refused):
            pass
    assert f.read_text() == "x"


def test_lock_holder_with_a_garbled_pid_is_none(tmp_path):
    from hpdm_cli.io.lock import LOCK_NAME, lock_holder
    (tmp_path / LOCK_NAME).write_text("pid=12x host=h since=now\n")
    assert lock_holder(tmp_path) is None
