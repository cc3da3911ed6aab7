"""Finding the files to prepare: the folder scan (hidden files, symlinks, unreadable folders, names that are not
UTF-8), the `Source` record of each file, and the storage order."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from .options import error

__all__ = ["VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS", "Source", "printable", "norm_rel", "scan_sources", "order_sources"]

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".avi", ".mkv", ".webm", ".flv", ".f4v", ".wmv", ".asf", ".mpg", ".mpeg",
    ".mpe", ".m1v", ".m2v", ".vob", ".ts", ".mts", ".m2ts", ".3gp", ".3g2", ".ogv", ".ogg", ".dv", ".mxf",
    ".nut", ".y4m", ".gif", ".divx", ".xvid", ".rm", ".rmvb", ".h264", ".264", ".hevc", ".265",
})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


def printable(name: str) -> str:
    """A file name as text that can be written anywhere: bytes that are not UTF-8 become \\xNN escapes."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    except UnicodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def inside(real: str, folder: str) -> bool:
    """Whether real path `real` is the real path `folder` or lies inside it."""
    return real == folder or real.startswith(folder.rstrip(os.sep) + os.sep)


def norm_rel(p: str) -> str:
    """A path as written in a labels, captions or split file, made relative and "/"-separated."""
    p = p.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p.lstrip("/")


@dataclass
class Source:
    """One file to prepare (or a reason, decided before decoding, why it is skipped)."""

    rel: str                              # path relative to its root, "/"-separated: the identity
    path: str                             # absolute path ("" if the file is missing)
    size: int
    kind: str = "video"
    label: int = -1
    caption: str = ""
    skip: str = ""                        # reason decided before decoding (label, split, ...)
    problem: bool = False                 # a folder or file the scan could not use (not a class, not a video)


class _Scan:
    """The state of one folder scan: what was found, ignored, walked, and the symlinks left for the end."""

    def __init__(self, extensions: Iterable[str], exclude: Sequence[str], problems: list):
        self.exts = {e.lower() for e in extensions}
        self.excluded = [os.path.realpath(e) for e in exclude]
        self.problems = problems
        self.found: list[tuple[str, str, int]] = []
        self.ignored: dict[str, int] = {}
        self.walked: dict[str, str] = {}       # real path of each folder walked -> its rel ("" = root)
        self.files: dict[str, str] = {}        # real path of each file found -> its rel
        self.linked_dirs: list[tuple[str, str]] = []
        self.linked_files: list[tuple[str, str]] = []

    def is_excluded(self, real: str) -> bool:
        """Whether a real path is an excluded folder or inside one."""
        return any(inside(real, e) for e in self.excluded)

    def walk(self, path: str, rel: str, real: str) -> None:
        """Walk a folder tree (sorted, depth first), recording files and setting symlinks aside."""
        stack = [(path, rel, real)]
        while stack:
            path, rel, real = stack.pop()
            if real in self.walked or self.is_excluded(real):
                continue
            self.walked[real] = rel
            try:
                with os.scandir(path) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                if not rel:
                    raise error(f"cannot read the source folder {path!r} ({e.strerror or e}): check its "
                                "permissions") from None
                self.problems.append((printable(rel) + "/", f"cannot read the folder ({e.strerror or e}): its files "
                                                            "are not included"))
                continue
            subdirs: list = []
            for entry in entries:
                if not entry.name.startswith("."):
                    self.entry(entry, f"{rel}/{entry.name}" if rel else entry.name, real, subdirs)
            stack.extend(reversed(subdirs))

    def entry(self, entry: os.DirEntry, erel: str, real: str, subdirs: list) -> None:
        """Record one folder entry: a sub-folder to walk, a symlink for later, a file found or ignored."""
        try:
            link, is_dir = entry.is_symlink(), entry.is_dir()
        except OSError:
            link, is_dir = False, False
        if is_dir:
            if printable(entry.name) != entry.name:
                self.problems.append((printable(erel) + "/", "the folder name is not valid UTF-8: rename the "
                                                             "folder; its files are not included"))
            elif link:
                self.linked_dirs.append((erel, entry.path))
            else:
                subdirs.append((entry.path, erel, os.path.join(real, entry.name)))
            return
        ext = printable(os.path.splitext(entry.name)[1].lower())
        if ext not in self.exts:
            self.ignored[ext or "(none)"] = self.ignored.get(ext or "(none)", 0) + 1
            return
        if printable(entry.name) != entry.name:
            self.problems.append((printable(erel), "the file name is not valid UTF-8: rename the file"))
        elif link:
            self.linked_files.append((erel, entry.path))
        else:
            try:
                size = entry.stat().st_size
            except OSError:
                size = -1
            self.found.append((erel, entry.path, size))
            self.files[os.path.join(real, entry.name)] = erel

    def follow_links(self) -> None:
        """Symlinked folders and files, after the real tree so that real paths win; duplicates are problems."""
        i = 0
        while i < len(self.linked_dirs):
            rel, path = self.linked_dirs[i]
            i += 1
            target = os.path.realpath(path)
            if target in self.walked:
                owner = self.walked[target]
                self.problems.append((rel + "/", f"symlink to the folder "
                                                 f"{owner + '/' if owner else '(the source folder)'!r}, whose files "
                                                 "are already included under their own paths (not taken twice)"))
            else:
                self.walk(path, rel, target)
        for rel, path in self.linked_files:
            target = os.path.realpath(path)
            if target in self.files:
                self.problems.append((rel, f"symlink to {self.files[target]!r}, which is already included under its "
                                           "own path (not taken twice)"))
                continue
            try:
                size = os.path.getsize(path)
            except OSError:
                size = -1
            self.files[target] = rel
            self.found.append((rel, path, size))


def scan_sources(root: str | os.PathLike, extensions: Iterable[str] = VIDEO_EXTENSIONS,
                 exclude: Sequence[str] = (), problems: list | None = None,
                 ) -> tuple[list[tuple[str, str, int]], dict[str, int]]:
    """Files under `root` with one of `extensions`: ([(rel, abs path, bytes)] sorted by rel, {ext: ignored count}).

    Hidden files and folders (name starting with ".") are skipped; folders in `exclude` (e.g.
    the output directory) are not entered. Symlinks are resolved: a symlinked folder or file
    whose target is already found under its own path inside `root` is not taken a second time
    (it would be labelled by the wrong class folder); one pointing elsewhere is followed once.
    What cannot be used is appended to `problems` as (rel, reason): such duplicates, unreadable
    folders and names that are not valid UTF-8 (rel shown with \\xNN escapes).
    """
    root = os.path.abspath(os.fspath(root))
    scan = _Scan(extensions, exclude, [] if problems is None else problems)
    scan.walk(root, "", os.path.realpath(root))
    scan.follow_links()
    scan.found.sort(key=lambda x: x[0])
    return scan.found, scan.ignored


def order_sources(sources: list[Source], order: str) -> list[Source]:
    """Storage order: sorted by path, or a fixed shuffle (by a hash of the path: independent of other files)."""
    if order == "sorted":
        return sorted(sources, key=lambda s: s.rel)
    return sorted(sources, key=lambda s: (hashlib.blake2b(s.rel.encode("utf-8"), digest_size=8).digest(), s.rel))
