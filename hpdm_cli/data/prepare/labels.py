"""Labels, captions and split lists: reading the files that give them (CSV / TSV, JSON lines, text, UCF-101's
split lists and classInd.txt, sidecar NAME.txt captions) and attaching them to the sources, or the reason a
source is skipped (no label, mislabelled, not in the split)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from typing import Callable, Iterable, Sequence

from .options import error
from .sources import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, Source, norm_rel, printable

__all__ = ["KeyIndex", "read_pairs", "read_class_index", "read_split", "sidecar_caption", "apply_split",
           "attach_labels", "attach_captions"]

_UCF_NAME = re.compile(r"^v_([A-Za-z0-9]+)_g\d+_c\d+$")
_KEY_COLUMNS = ("path", "file", "filename", "file_name", "video", "video_path", "videoid", "video_id", "id", "name")
_LABEL_COLUMNS = ("label", "class", "class_name", "category", "action")
_CAPTION_COLUMNS = ("caption", "text", "description", "prompt", "name")


class KeyIndex:
    """Match keys from a labels / captions file to sources: exact path, path without suffix, name, stem.

    Case is ignored, except that of sources whose paths differ only in case (a/Case.mp4 and a/case.mp4) a key
    names the one of its own spelling.
    """

    def __init__(self, rels: Iterable[str]):
        self.maps: list[dict[str, list[tuple[str, str]]]] = [{}, {}, {}, {}]
        for rel in rels:
            base = rel.rsplit("/", 1)[-1]
            for m, key in zip(self.maps, (rel, os.path.splitext(rel)[0], base, os.path.splitext(base)[0])):
                m.setdefault(key.lower(), []).append((key, rel))

    def lookup(self, key: str) -> list[str]:
        """The sources a key names, by the first of the four matches that finds any (else [])."""
        key = norm_rel(key)
        for m in self.maps:
            hit = m.get(key.lower())
            if hit:
                same: dict[str, list[tuple[str, str]]] = {}       # sources whose paths differ only in case
                for k, rel in hit:
                    same.setdefault(rel.lower(), []).append((k, rel))
                return [r for group in same.values() for r in ([rel for k, rel in group if k == key]
                                                                or [rel for _, rel in group])]
        return []


# ============================================================================ reading the files

def read_pairs(path: str, what: str, value_columns: Sequence[str],
               is_key: Callable[[str], bool] | None = None) -> list[tuple[str, str, str]]:
    """(key, value, where) rows of a CSV/TSV (header row), JSON lines / JSON, or text ("key value" per line) file.

    `where` locates the row for messages ("line 7", "entry 3"). In a CSV, a quoted field that
    swallows the following lines because its closing quote is missing is an error: it is
    recognised by a line inside the field that parses as a row of its own, with a key that
    `is_key` accepts (or that ends with a video or image suffix).
    """
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read the {what} file {path!r} ({e})") from None
    if ext in (".csv", ".tsv"):
        return _csv_pairs(path, text, what, value_columns, is_key, "\t" if ext == ".tsv" else ",")
    if ext in (".jsonl", ".json", ".ndjson"):
        return _json_pairs(path, text, what, value_columns, ext)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):  # plain text: "key<TAB>value" or "key value..."
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t", 1) if "\t" in line else line.split(None, 1)
        rows.append((parts[0], parts[1].strip() if len(parts) > 1 else "", f"line {n}"))
    return rows


def _csv_pairs(path: str, text: str, what: str, value_columns: Sequence[str], is_key: Callable[[str], bool] | None,
               delimiter: str) -> list[tuple[str, str, str]]:
    """The rows of a CSV / TSV file with a header naming a path column and a value column."""
    rows: list[tuple[str, str, str]] = []
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))  # a field is at most the whole file (128 KiB by default)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader, [])
        cols = {c.strip().lower(): i for i, c in enumerate(header)}
        vpos = next((cols[c] for c in value_columns if c in cols), None)
        kpos = next((cols[c] for c in _KEY_COLUMNS if c in cols and cols[c] != vpos), None)
        if kpos is None or vpos is None:
            raise error(f"{what} file {path!r}: need a header with a path column "
                        f"({', '.join(_KEY_COLUMNS[:4])}) and a {what} column ({', '.join(value_columns[:3])}); "
                        f"found {list(cols)}")
        looks_like_key = is_key or (lambda k: os.path.splitext(k.strip())[1].lower() in
                                    VIDEO_EXTENSIONS | IMAGE_EXTENSIONS)
        line = reader.line_num
        for cells in reader:
            first, line = line + 1, reader.line_num  # the physical lines of this row
            for value in cells:
                if "\n" in value or "\r" in value:
                    _check_closed(value, len(header), kpos, delimiter, looks_like_key, f"{what} file {path!r}", first)
            key = cells[kpos].strip() if len(cells) > kpos else ""
            if key:
                rows.append((key, cells[vpos] if len(cells) > vpos else "", f"line {first}"))
    except csv.Error as e:
        raise error(f"{what} file {path!r} line {reader.line_num}: not valid CSV ({e})") from None
    finally:
        csv.field_size_limit(limit)
    return rows


def _check_closed(value: str, width: int, kpos: int, delimiter: str, looks_like_key: Callable[[str], bool],
                  where: str, first: int) -> None:
    """Refuse a multi-line field whose continuation lines are rows of their own (its closing quote is missing)."""
    for j, cont in enumerate(value.splitlines()[1:], 1):
        inner = next(csv.reader([cont], delimiter=delimiter), [])
        if len(inner) >= width and inner[kpos].strip() and looks_like_key(inner[kpos]):
            raise error(f"{where} line {first}: a quoted field opened on this line is not closed, so it swallows "
                        f"line {first + j} ({cont[:60]!r}) and what follows: close the quote (a quote inside a "
                        "quoted field is written twice: \"\")")


def _json_pairs(path: str, text: str, what: str, value_columns: Sequence[str],
                ext: str) -> list[tuple[str, str, str]]:
    """The rows of a JSON lines file, a JSON list of objects or a JSON object {path: value}."""
    items: list = []
    where: list[str] = []
    stripped = text.strip()
    if ext == ".json" and stripped[:1] in "[{":
        try:
            obj = json.loads(stripped)
            items = obj if isinstance(obj, list) else [{"path": k, value_columns[0]: v} for k, v in obj.items()]
            where = [f"entry {n}" for n in range(1, len(items) + 1)]
        except json.JSONDecodeError:
            items = []
    if not items:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                    where.append(f"line {n}")
                except json.JSONDecodeError as e:
                    raise error(f"{what} file {path!r} line {n}: not JSON ({e.msg})") from None
    rows = []
    for obj, at in zip(items, where):
        if not isinstance(obj, dict):
            raise error(f"{what} file {path!r} {at}: expected an object with a path and a {what}")
        low = {str(k).lower(): v for k, v in obj.items()}
        vkey = next((c for c in value_columns if c in low), None)
        kkey = next((c for c in _KEY_COLUMNS if c in low and c != vkey), None)
        if kkey is None or vkey is None:
            raise error(f"{what} file {path!r} {at}: expected keys like \"path\" and \"{value_columns[0]}\"")
        rows.append((str(low[kkey]), "" if low[vkey] is None else str(low[vkey]), at))
    return rows


def read_class_index(path: str) -> list[str] | None:
    """UCF-101's classInd.txt ("1 ApplyEyeMakeup" per line) -> class names in label order, or None."""
    if not os.path.isfile(path):
        return None
    entries = []
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                entries.append((int(parts[0]), parts[1]))
    if not entries:
        return None
    entries.sort()
    return [name for _, name in entries]


def read_split(path: str) -> list[tuple[str, int | None]]:
    """A split list (UCF-101 trainlist01.txt: "Class/v_Class_g08_c01.avi 1"; testlist: path only)."""
    out = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read the split file {path!r} ({e})") from None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out.append((norm_rel(parts[0]), int(parts[1])))
        else:
            out.append((norm_rel(line), None))
    if not out:
        raise error(f"split file {path!r} lists no files")
    return out


def sidecar_caption(path: str) -> tuple[str, str]:
    """(the caption in NAME.txt next to a video NAME.ext on one line, why it was not read): ("", "") without one.

    A file that is not UTF-8 text (or holds NUL bytes: a binary file named .txt) gives no caption and its reason.
    """
    txt = os.path.splitext(path)[0] + ".txt"
    if not os.path.isfile(txt):
        return "", ""
    try:
        with open(txt, "rb") as f:
            raw = f.read()
    except OSError as e:
        return "", f"{os.path.basename(txt)}: unreadable ({e.strerror or e})"
    try:
        text = raw.decode("utf-8-sig")                                  # a byte-order mark is not part of it
    except UnicodeDecodeError as e:
        return "", f"{os.path.basename(txt)}: not UTF-8 text (byte {e.start})"
    if "\0" in text:
        return "", f"{os.path.basename(txt)}: holds NUL bytes, not text"
    return " ".join(text.split()), ""


# ============================================================================ attaching them to the sources

def apply_split(sources: list[Source], split: str, kind: str,
                info: dict) -> tuple[list[Source], dict[str, int | None], list[str] | None]:
    """Keep the sources a split list names (a listed file that is missing is a skipped source).

    Returns (sources sorted by path, {rel: label the list gives, or None}, the class names of
    the classInd.txt beside the list, or None); counts the sources left out in `info`.
    """
    entries = read_split(split)
    split_classes = read_class_index(os.path.join(os.path.dirname(os.path.abspath(split)), "classInd.txt"))
    by_rel = {s.rel.lower(): s for s in sources}
    split_labels: dict[str, int | None] = {}
    keep: list[Source] = []
    for rel, lab in entries:
        s = by_rel.get(rel.lower())
        if s is None:
            keep.append(Source(rel, "", -1, kind, skip=f"listed in the split file {os.path.basename(split)}"
                                                       " but not found in the source folder"))
            continue
        if s.rel in split_labels:
            continue  # listed twice
        split_labels[s.rel] = lab
        keep.append(s)
    info["excluded_by_split"] = len(sources) - len(split_labels)
    return sorted(keep, key=lambda s: s.rel), split_labels, split_classes


def attach_labels(sources: list[Source], labels: str, info: dict, class_names: list[str] | None,
                  split_labels: dict[str, int | None], split_classes: list[str] | None) -> list[str]:
    """Label the sources by `labels` (auto, folders, none or a labels file); returns the class names.

    A source that cannot be labelled, or whose label contradicts its file name or the split
    list, gets its skip reason. `class_names` fixes the classes (joint image and video data).
    """
    mode = labels
    present = [s for s in sources if s.path]
    if mode == "auto":
        mode = "folders" if present and all("/" in s.rel for s in present) else "none"
    info["labels"] = mode if mode in ("folders", "none") else f"file {printable(labels)}"
    if mode == "folders":
        return _label_by_folders(sources, class_names, split_labels, split_classes)
    if mode != "none":
        return _label_by_file(sources, present, mode, class_names, info)
    return []


def _label_by_folders(sources: list[Source], class_names: list[str] | None, split_labels: dict[str, int | None],
                      split_classes: list[str] | None) -> list[str]:
    """Class = the first sub-folder (the UCF-101 layout), checked against the file name and the split list."""
    folder = {s.rel: s.rel.split("/", 1)[0] if "/" in s.rel else None for s in sources if not s.problem}
    if class_names is not None:
        names = list(class_names)
    elif split_classes is not None:
        names = split_classes
    else:
        names = sorted({f for f in folder.values() if f})
    lookup = {n.lower(): i for i, n in enumerate(names)}
    for s in sources:
        if s.skip:
            continue
        f = folder[s.rel]
        if f is None:
            s.skip = "no label: the file is not inside a class folder (--labels folders)"
            continue
        if f.lower() not in lookup:
            s.skip = f"mislabelled: folder {f!r} is not a class of classInd.txt"
            continue
        s.label = lookup[f.lower()]
        m = _UCF_NAME.match(os.path.splitext(s.rel.rsplit("/", 1)[-1])[0])
        if m and m.group(1).lower() != f.lower():
            s.skip = f"mislabelled: the file name says class {m.group(1)!r} but it is in folder {f!r}"
            continue
        lab = split_labels.get(s.rel)
        if lab is not None and split_classes is not None and not (
                1 <= lab <= len(split_classes) and split_classes[lab - 1].lower() == f.lower()):
            said = split_classes[lab - 1] if 1 <= lab <= len(split_classes) else f"#{lab}"
            s.skip = f"mislabelled: the split file says class {said!r} but the file is in folder {f!r}"
    return names


def _label_by_file(sources: list[Source], present: list[Source], path: str, class_names: list[str] | None,
                   info: dict) -> list[str]:
    """Labels from a labels file; a source listed with two different labels is skipped."""
    index = KeyIndex(s.rel for s in present)
    pairs = read_pairs(path, "label", _LABEL_COLUMNS, is_key=lambda k: bool(index.lookup(k)))
    given: dict[str, str] = {}
    conflict: set[str] = set()
    for key, value, _ in pairs:
        hits = index.lookup(key)
        if not hits:
            info["unmatched_label_entries"] += 1
        for rel in hits:
            if rel in given and given[rel] != value.strip():
                conflict.add(rel)
            given[rel] = value.strip()
    names = list(class_names) if class_names is not None else sorted(
        {v for v in given.values() if v}, key=lambda v: (0, int(v), "") if v.lstrip("-").isdigit() else (1, 0, v))
    lookup = {n: i for i, n in enumerate(names)}
    for s in sources:
        if s.skip:
            continue
        v = given.get(s.rel)
        if s.rel in conflict:
            s.skip = "mislabelled: the labels file gives it several different labels"
        elif not v:
            s.skip = f"no label: not listed in the labels file {os.path.basename(path)}"
        elif v not in lookup:
            s.skip = f"mislabelled: label {v!r} is not a known class"
        else:
            s.label = lookup[v]
    return names


def attach_captions(sources: list[Source], captions: str | None, strict: bool, info: dict) -> None:
    """Attach each source's caption: from a captions file, else from a sidecar NAME.txt file.

    In a captions file the last row of a source wins (a warning, or an error with `strict`).
    """
    present = [s for s in sources if s.path]
    if not (captions and os.path.isfile(captions)):
        unread = []
        for s in present:
            s.caption, why = sidecar_caption(s.path)
            if why:
                unread.append(why)
        info["captions"] = "sidecar .txt files" if any(s.caption for s in sources) else "none"
        if unread:
            info.setdefault("warnings", []).append(
                f"{len(unread)} sidecar caption {'file is' if len(unread) == 1 else 'files are'} not read, e.g. "
                f"{printable(unread[0])}: {'its video is' if len(unread) == 1 else 'their videos are'} stored "
                "without a caption")
        return
    index = KeyIndex(s.rel for s in present)
    by_rel = {s.rel: s for s in present}
    first_row: dict[str, str] = {}
    conflicts: list[tuple[str, str, str]] = []
    unmatched: list[str] = []
    for key, value, where in read_pairs(captions, "caption", _CAPTION_COLUMNS, is_key=lambda k: bool(index.lookup(k))):
        hits = index.lookup(key)
        if not hits:
            info["unmatched_caption_entries"] += 1
            unmatched.append(key)
        caption = " ".join(value.split())
        for rel in hits:
            if rel in first_row and by_rel[rel].caption != caption:
                conflicts.append((rel, first_row[rel], where))
            first_row.setdefault(rel, where)
            by_rel[rel].caption = caption
    info["captions"] = f"file {printable(captions)}"
    info["unmatched_captions"], info["matched_captions"] = unmatched, bool(first_row)   # judged over all parts
    bare = [s.rel for s in present if not s.skip and s.rel not in first_row]
    if first_row and bare:               # a part the file skips altogether (e.g. a joint run's images) is meant so
        what = "videos" if present[0].kind == "video" else "images"
        info.setdefault("warnings", []).append(
            f"{len(bare)} of {len(bare) + len([r for r in first_row if not by_rel[r].skip])} {what} have no row in "
            f"the captions file {captions!r} (e.g. {printable(bare[0])!r}): they are stored without a caption")
    if conflicts:
        rel, a, b = conflicts[0]
        n = len({c[0] for c in conflicts})
        msg = (f"the captions file {captions!r} gives {n} {'video' if n == 1 else 'videos'} different "
               f"captions in several rows, e.g. {rel!r} ({a} and {b}); the last row is used")
        if strict:
            raise error(msg + ": keep one row per video (or drop --strict)")
        info.setdefault("warnings", []).append(msg)
