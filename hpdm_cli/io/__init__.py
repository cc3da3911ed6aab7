"""Input/output helpers: crash-safe (atomic) file writing here; video encoding and decoding (`video`), directory
locks (`lock`) and PNG contact sheets (`contact_sheet`) in the submodules.

Every file hpdm writes goes through `atomic_open` / `atomic_write_bytes`: the content is
written to a temporary name in the destination's directory, flushed, fsynced and then
`os.replace`d onto the final path, so a reader never sees a half-written file and a
crash or an exception leaves any previous file at that path intact.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from typing import IO, Any, Callable, Iterator

__all__ = ["NAME_MAX", "atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fsync_dir",
           "holds_other_than", "json_text", "make_folder", "unwritable"]


NAME_MAX = 255          # bytes in one file name on Linux, macOS and Windows file systems


def fsync_dir(directory: str | os.PathLike) -> None:
    """Fsync a directory so that a rename inside it survives a power loss (best effort)."""
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replaced_on_success(path: str | os.PathLike) -> Iterator[str]:
    """A temporary name next to `path`, `os.replace`d onto it when the body succeeds and removed if it raises."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    # The name is cut so that a legal long name (up to NAME_MAX, 255 bytes) still has a legal temporary one.
    stem = os.fsencode(os.path.basename(path))[:200].decode(errors="ignore")
    tmp = os.path.join(directory, f".{stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to `path`; on success fsync it and `os.replace` it onto `path`.

    If the body raises, the temporary file is removed and `path` is left untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode {mode!r}: expected 'wb' or 'w'")
    with _replaced_on_success(path) as tmp:
        # os.open with mode 0o666 (not mkstemp's 0o600) so the final file gets the usual umask permissions.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        f = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline="") if mode == "w" else os.fdopen(fd, "wb")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to `path` for a writer that opens files by name; then fsync and replace.

    The body must create the file at the yielded path; if it raises (or creates nothing),
    the temporary file is removed and `path` is left untouched.
    """
    with _replaced_on_success(path) as tmp:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)  # FileNotFoundError if the body wrote nothing
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # Some writers create their file private (safetensors: 0o600); give it the usual umask permissions,
        # as atomic_open does, so that a shared run directory's weights stay readable to the group.
        os.chmod(tmp, 0o666 & ~_umask())


def _umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary file, fsync, `os.replace`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically (temporary file, fsync, `os.replace`)."""
    with atomic_open(path, "w") as f:
        f.write(text)


def _finite(value: Any) -> Any:
    """`value` with every non-finite float inside it (NaN, ±inf) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_text(value: Any, indent: int | None = 1) -> str:
    """`value` as strict JSON text ending in a newline, NaN and infinities as null.

    A CPU's unknown peak memory or MFU, or a score of no clips, is NaN in Python; as null every
    JSON reader accepts it, where Python's bare NaN is not JSON.
    """
    return json.dumps(_finite(value), indent=indent, allow_nan=False) + "\n"


def atomic_write_json(path: str | os.PathLike, value: Any, indent: int | None = 1) -> None:
    """Write `value` to `path` atomically as strict JSON (`json_text`: non-finite floats as null)."""
    atomic_write_text(path, json_text(value, indent))


def make_folder(folder: str | os.PathLike, what: str) -> None:
    """Create `folder` and its parents for an output of option `what`; a failure is an HPDMError in one line."""
    from ..errors import HPDMError
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise HPDMError(f"{what}: cannot create the folder {os.fspath(folder)!r} ({e.strerror or e})") from None


def holds_other_than(path: str | os.PathLike, ours: Callable[[Any], bool]) -> bool:
    """Whether `path` holds a file other than an empty one or JSON that `ours` recognises as this command's report.

    A `--json` output may replace an earlier report of the same command, never another file (a dataset's
    description, another tool's JSON): the callers refuse those before any work.
    """
    path = os.fspath(path)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    try:
        with open(path, encoding="utf-8") as f:
            return not ours(json.load(f))
    except (OSError, ValueError):
        return True


def unwritable(path: str | os.PathLike, *, make_dirs: bool = True, suffix: str | None = None) -> str | None:
    """Why a file could not be written at `path`, in words for an error message, or None when it can.

    Checked before any long work: the `suffix` (".json": so that a mistyped path cannot overwrite a
    video), not a directory, every existing folder above it a folder, and the nearest existing one
    writable (a probe file is created and removed there). Missing folders are fine with `make_dirs`
    (the writer creates them), else the file's own folder must exist.
    """
    path = os.path.abspath(os.fspath(path))
    long = next((part for part in path.split(os.sep) if len(os.fsencode(part)) > NAME_MAX), None)
    if long is not None:
        which = "its file name" if long == os.path.basename(path) else f"the folder name {long[:20]}..."
        return f"{which} is longer than {NAME_MAX} bytes, the limit of most file systems: shorten it"
    if os.path.isdir(path):
        return "it is a directory: give a file name"
    if suffix is not None and os.path.splitext(path)[1].lower() != suffix:
        return f"expected a {suffix} file name"
    d = os.path.dirname(path)
    if not make_dirs and not os.path.exists(d):
        return f"folder {d!r} does not exist: create it or pick another path"
    while not os.path.exists(d) and os.path.dirname(d) != d:
        d = os.path.dirname(d)
    if not os.path.isdir(d):
        return f"{d!r} is a file, not a folder"
    probe = os.path.join(d, f".hpdm-write-test-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as e:
        return f"folder {d!r} is not writable ({e.strerror or e})"
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None
