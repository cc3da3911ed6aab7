"""An exclusive lock on a directory, so that two hpdm processes never write into the same run or dataset.

`hold_lock(directory, what)` takes an advisory `fcntl.flock` on `directory/.hpdm.lock`. The
kernel releases it when the holder exits, however it exits (Ctrl-C, SIGTERM, `kill -9`), so a
lock left behind by a dead process is taken over without any clean-up. The holder writes its
pid, host and start time into the file; a second process reads them for its one-line error.
Forked children (e.g. DataLoader workers) close their inherited copy at once, so a leftover
child cannot keep a dead parent's lock. The lock file itself is never deleted (deleting it
would let two processes lock two different files of the same name).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

__all__ = ["LOCK_NAME", "hold_lock", "lock_holder"]

LOCK_NAME = ".hpdm.lock"

_held: dict[str, int] = {}                 # realpath of a locked directory -> fd (locks of this process)


def _close_in_child() -> None:
    for fd in list(_held.values()):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                # exists, owned by another user
        return True
    return True


def lock_holder(directory: str | os.PathLike) -> Optional[dict]:
    """The pid, host and start time recorded in a directory's lock file (None when absent or unreadable)."""
    try:
        text = (Path(directory) / LOCK_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    info = dict(part.split("=", 1) for part in text.split() if "=" in part)
    if "pid" not in info or not info["pid"].isdigit():
        return None
    return {"pid": int(info["pid"]), "host": info.get("host", "?"), "since": info.get("since", "")}


def _describe(directory: Path) -> str:
    h = lock_holder(directory)
    if h is None:
        return "another process (its pid is not recorded yet)"
    s = f"pid {h['pid']} on host {h['host']}" + (f", since {h['since']}" if h["since"] else "")
    if h["host"] == socket.gethostname() and not _pid_alive(h["pid"]):
        s += "; that process has exited but a process it started still holds the lock"
    return s


@contextlib.contextmanager
def hold_lock(directory: str | os.PathLike, what: str, error: type[Exception] = RuntimeError, *,
              warn: Optional[Callable[[str], None]] = None) -> Iterator[Path]:
    """Hold an exclusive lock on `directory` (created if missing) for the body; `error(message)` if it is taken.

    `what` names the operation for the message (e.g. "hpdm train"). On a file system without
    lock support the body runs unlocked after `warn(message)`. Re-entering the lock of a
    directory this process already holds is refused like another process would be.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise error(f"{directory} is a file, not a directory; pass a directory path")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"cannot create {directory} ({e.strerror or e}); pass a writable directory") from None
    key = os.path.realpath(directory)
    if key in _held:
        raise error(f"{what}: {directory} is already in use by this process (pid {os.getpid()}); "
                    "use another directory")
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise error(f"cannot create the lock file {path} ({e.strerror or e}); "
                    "pass a writable directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise error(f"{what}: {directory} is in use by another hpdm process ({_describe(directory)}); "
                    "wait for it to finish or stop it, or use another directory") from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            os.close(fd)
            raise error(f"cannot lock {path} ({e.strerror or e})") from None
        if warn is not None:
            warn(f"{directory}: the file system does not support locks; "
                 "make sure no other hpdm process uses this directory")
        os.close(fd)
        yield directory
        return
    _held[key] = fd
    try:
        with contextlib.suppress(OSError):
            note = (f"pid={os.getpid()} host={socket.gethostname()} "
                    f"since={time.strftime('%Y-%m-%dT%H:%M:%S')}\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, note, 0)
        yield directory
    finally:
        _held.pop(key, None)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)                    # no stale holder for the next reader's message
        os.close(fd)                               # releases the lock
