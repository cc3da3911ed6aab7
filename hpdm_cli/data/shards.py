"""The on-disk dataset format of hpdm: sharded, compressed, randomly accessible videos.

Layout of a dataset directory (format "hpdm-shards", version 1)::

    DIR/
      dataset.json          top-level description, written atomically and LAST (its presence
                            marks a complete dataset)
      captions.json         JSON list of the distinct captions; a video's `caption_id` indexes it
      shard-00000.bin       concatenation of per-video H.264 mp4 blobs (short GOP, yuv420p)
      shard-00000.jsonl     one JSON object per video of that shard, in order:
                            {"offset", "length", "crc32", "num_frames", "height", "width",
                             "fps", "label", "caption_id", "caption", "source"}
      shard-00001.bin ...

`dataset.json` holds: format, version, codec settings, totals (num_videos, num_frames,
num_bytes), fps, resolution ([H, W] when every video has the same size, else null),
min/max frames, class_names, num_captions, the shard list (file names, video/frame/byte
counts) and a free-form `meta` object (e.g. the generator and its arguments).

Design:
* Random access: a video is one self-contained mp4 blob at a known byte range; reading a
  clip reads only those bytes (`os.pread`) and decodes from the keyframe before the clip
  (keyframe every `gop` = 16 frames by default), so no shard is ever scanned.
* Compression: H.264 at CRF 18 (visually lossless) -- typically 20-100x smaller than raw.
* Sharding: a writer rolls over to a new shard every `max_videos_per_shard` videos or
  `max_shard_bytes` bytes; `shard_indices(rank, world_size)` gives each rank a balanced,
  disjoint, contiguous range of videos, so ranks read (almost) disjoint shard files and
  only the shard indices a rank touches are ever parsed (lazily).
* Crash safety: every file is written under a temporary name, fsynced and renamed; the
  dataset becomes visible only when dataset.json appears. An exception inside
  `with ShardWriter(...)` removes what that writer wrote -- or, for resumable writers
  (`keep_on_error=True`, used by `hpdm prepare`), only the unfinished shard: `on_shard` reports
  each finished shard, and `ShardWriter(..., resume=k)` continues after the first k.
* Labels: integers into `class_names`, or -1 for "no label". Captions: strings ("" = none),
  deduplicated so that text embeddings can be computed once per distinct caption.
* Training reads clips through `hpdm_cli.data.loader` (`ClipDataset`, `make_loader`); file handles
  are opened lazily per process, so DataLoader workers (fork or spawn) work. This module does not
  import torch.
"""

from __future__ import annotations

import bisect
import collections
import json
import os
import re
import shutil
import zlib
from typing import Callable, Sequence

import numpy as np

from hpdm_cli.errors import HPDMError
from hpdm_cli.io import atomic_write_text, fsync_dir

__all__ = [
    "DataError", "FORMAT_NAME", "FORMAT_VERSION", "ShardWriter", "VideoDataset", "is_dataset", "STAGING_DIR",
    "staging_dir", "replace_dataset", "finish_replace",
]

FORMAT_NAME = "hpdm-shards"
FORMAT_VERSION = 1
_SHARD_RE = re.compile(r"^shard-\d{5,}\.(bin|jsonl)$")
_TMP_RE = re.compile(r"^\.(shard-\d{5,}\.(bin|jsonl)|captions\.json|dataset\.json)\..*\.tmp$")
_MAX_OPEN_FILES = 64
STAGING_DIR = ".next"  # inside a dataset directory: where the dataset that replaces it is built


class DataError(HPDMError, ValueError):
    """A dataset is missing, corrupt or used wrongly; the message says what and how to fix it."""


def is_dataset(path: str | os.PathLike) -> bool:
    """True if `path` is a directory holding a (complete) hpdm dataset."""
    return os.path.isfile(os.path.join(os.fspath(path), "dataset.json"))


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def _entry_path(directory: str, name, what: str, source: str) -> str:
    """`directory/name` for a file named in a dataset description; DataError unless it stays inside `directory`."""
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise DataError(f"{source!r}: {what} {name!r} is not a file name: re-create the dataset with `hpdm prepare`")
    if os.path.isabs(name) or os.path.splitdrive(name)[0] or ".." in re.split(r"[\\/]", name):
        raise DataError(f"{source!r}: {what} {name!r} points outside the dataset folder (absolute paths and '..' "
                        "are refused): re-create the dataset with `hpdm prepare`")
    return os.path.join(directory, name)


def staging_dir(path: str | os.PathLike) -> str:
    """The hidden folder inside dataset directory `path` where a dataset that will replace it is built."""
    return os.path.join(os.fspath(path), STAGING_DIR)


def replace_dataset(staged: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the complete dataset built in `staged` over the one in `target`; dataset.json moves last.

    The old dataset stays whole until the new one is complete (`staged/dataset.json` exists);
    from then on the replacement is decided, and if it stops half-way (a crash) calling this
    again, or `finish_replace(target)`, completes it. Other plain files in `staged` (e.g. a
    report) move along; stale shards of the old dataset are removed; `staged` is deleted.
    """
    staged, target = os.fspath(staged), os.fspath(target)
    top_path = os.path.join(staged, "dataset.json")
    try:
        with open(top_path, encoding="utf-8") as f:
            top = json.load(f)
        names = [top.get("captions") or "captions.json"] + [s[k] for s in top["shards"] for k in ("bin", "index")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"cannot publish the dataset built in {staged!r} ({e}): re-run the command") from None
    for name in names:
        _entry_path(staged, name, "file", top_path)
    old = os.path.join(target, "dataset.json")
    if os.path.exists(old):
        os.unlink(old)  # from here on the new dataset is being moved in
        fsync_dir(target)
    for name in names:
        src = os.path.join(staged, name)
        if os.path.exists(src):
            os.replace(src, os.path.join(target, name))
        elif not os.path.exists(os.path.join(target, name)):
            raise DataError(f"the dataset built in {staged!r} is incomplete ({name!r} is missing): re-run the "
                            "command")
    for name in sorted(os.listdir(staged)):
        src = os.path.join(staged, name)
        if name != "dataset.json" and not name.startswith(".") and os.path.isfile(src):
            os.replace(src, os.path.join(target, name))
    keep = set(names)
    for name in os.listdir(target):
        if (_SHARD_RE.match(name) and name not in keep) or _TMP_RE.match(name):
            try:
                os.unlink(os.path.join(target, name))
            except OSError:
                pass
    fsync_dir(target)
    os.replace(top_path, old)
    fsync_dir(target)
    shutil.rmtree(staged, ignore_errors=True)


def finish_replace(path: str | os.PathLike) -> bool:
    """Complete a replacement of the dataset in `path` that a crash interrupted; True if there was one."""
    stage = staging_dir(path)
    if os.path.isfile(os.path.join(stage, "dataset.json")):
        replace_dataset(stage, path)
        return True
    return False


# ============================================================================ writing

class ShardWriter:
    """Write videos into a sharded dataset directory; use as a context manager (close() publishes it)."""

    def __init__(self, out_dir: str | os.PathLike, *, fps: float = 25.0, class_names: Sequence[str] | None = None,
                 meta: dict | None = None, max_videos_per_shard: int = 1000, max_shard_bytes: int = 1 << 30,
                 crf: int = 18, gop: int = 16, preset: str = "fast", overwrite: bool = False,
                 resume: int = 0, on_shard: Callable[[dict], None] | None = None, keep_on_error: bool = False):
        """Open a writer; `resume`, `on_shard` and `keep_on_error` serve resumable writers (`hpdm prepare`).

        overwrite:     replace a dataset already in `out_dir`; the new one is built aside (in
                       `staging_dir(out_dir)`) and moved in by `close()`, so until then, and if
                       the writer fails, the old dataset stays usable.
        resume:        adopt the first `resume` finished shards (shard-00000 .. ) already in `out_dir`
                       (written by an earlier writer with the same settings): their videos, captions and
                       counts are taken over and new videos continue after them; later shard files and
                       stale temporary files are removed.
        on_shard:      called with the shard's entry of the `shards` list (bin, index, num_videos,
                       num_frames, num_bytes) once its files are final (fsynced and renamed).
        keep_on_error: an exception inside `with` drops only the unfinished shard, keeping finished
                       ones for a later `resume` (default: remove everything this writer wrote).
        preset:        x264's speed preset; the default is a dataset's, `hpdm_cli.data.prepare.options.
                       DATASET_PRESET` (written out here: that module imports this one's errors).
        """
        self.out_dir = os.fspath(out_dir)
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise DataError(f"dataset path {self.out_dir!r} is a file: choose a directory path")
        if max_videos_per_shard < 1 or max_shard_bytes < 1:
            raise DataError("max_videos_per_shard and max_shard_bytes must be positive")
        if not (float(fps) > 0):
            raise DataError(f"fps = {fps!r}: expected a positive number")
        os.makedirs(self.out_dir, exist_ok=True)
        finish_replace(self.out_dir)
        self._final_dir: str | None = None     # set when building aside a dataset that replaces this one
        if os.path.exists(os.path.join(self.out_dir, "dataset.json")):
            if not overwrite:
                raise DataError(f"{self.out_dir!r} already holds a dataset: choose another directory or "
                                "overwrite it (`hpdm prepare --overwrite`)")
            stage = staging_dir(self.out_dir)
            if not int(resume):
                shutil.rmtree(stage, ignore_errors=True)  # an abandoned earlier attempt
            os.makedirs(stage, exist_ok=True)
            self._final_dir, self.out_dir = self.out_dir, stage
        self.fps = float(fps)
        self.class_names = [str(c) for c in (class_names or [])]
        self.meta = dict(meta or {})
        self.max_videos_per_shard = int(max_videos_per_shard)
        self.max_shard_bytes = int(max_shard_bytes)
        self.crf, self.gop, self.preset = int(crf), int(gop), str(preset)
        self._shards: list[dict] = []          # finished shards
        self._records: list[dict] = []         # records of the open shard
        self._bin = None                       # open temp file of the current shard
        self._tmp_bin = ""
        self._offset = 0
        self._captions: dict[str, int] = {}
        self._sizes: set[tuple[int, int]] = set()
        self._frames_min = self._frames_max = 0
        self._num_videos = 0
        self._closed = False
        self._written: list[str] = []          # final paths written by this writer (for abort)
        self._on_shard = on_shard
        self._keep_on_error = bool(keep_on_error)
        if int(resume) < 0:
            raise DataError(f"resume = {resume}: expected the number of finished shards to adopt (>= 0)")
        self._remove_stale(keep=int(resume))
        for i in range(int(resume)):
            self._adopt_shard(i)

    # ---------------------------------------------------------------- public
    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._keep_on_error:
            self._drop_open_shard()
            self._closed = True
        else:
            self.abort()

    def __len__(self) -> int:
        return self._num_videos

    def add(self, frames: np.ndarray, *, label: int = -1, caption: str = "", source: str = "",
            fps: float | None = None) -> int:
        """Encode and append one video (uint8 [T,H,W,3]; T = 1 for an image); returns its dataset index."""
        from hpdm_cli.io.video import VideoError, encode_mp4_bytes  # noqa: PLC0415
        a = np.asarray(frames)
        if a.ndim == 3 and a.shape[-1] == 3:
            a = a[None]  # an image is a one-frame video
        try:
            blob = encode_mp4_bytes(a, fps or self.fps, crf=self.crf, gop=self.gop, preset=self.preset)
        except VideoError as e:
            raise DataError(f"cannot add video {source or self._num_videos!r}: {e}") from None
        return self.add_encoded(blob, num_frames=a.shape[0], height=a.shape[1], width=a.shape[2],
                                fps=fps, label=label, caption=caption, source=source)

    def add_encoded(self, blob: bytes, *, num_frames: int, height: int, width: int, fps: float | None = None,
                    label: int = -1, caption: str = "", source: str = "") -> int:
        """Append an already encoded mp4 blob (from `encode_mp4_bytes`, e.g. made in worker processes)."""
        if self._closed:
            raise DataError("ShardWriter is closed: create a new writer to add videos")
        label = int(label)
        if label < -1 or (self.class_names and label >= len(self.class_names)):
            raise DataError(f"label = {label} for video {source or self._num_videos!r}: expected -1 (none) or "
                            f"0..{len(self.class_names) - 1} (an index into class_names)")
        if not self.class_names and label >= 0:
            raise DataError(f"label = {label} but the writer has no class_names: pass class_names=[...]")
        if num_frames < 1 or height < 1 or width < 1 or not blob:
            raise DataError(f"video {source or self._num_videos!r} is empty ({num_frames} frames, {height}x{width})")
        if self._bin is None or len(self._records) >= self.max_videos_per_shard or (
                self._records and self._offset + len(blob) > self.max_shard_bytes):
            self._finish_shard()
            self._open_shard()
        caption = str(caption)
        cid = self._captions.setdefault(caption, len(self._captions))
        self._bin.write(blob)
        self._records.append(dict(offset=self._offset, length=len(blob), crc32=zlib.crc32(blob) & 0xFFFFFFFF,
                                  num_frames=int(num_frames), height=int(height), width=int(width),
                                  fps=float(fps or self.fps), label=label, caption_id=cid, caption=caption,
                                  source=str(source)))
        self._offset += len(blob)
        self._sizes.add((int(height), int(width)))
        self._frames_min = min(self._frames_min, int(num_frames)) if self._num_videos else int(num_frames)
        self._frames_max = max(self._frames_max, int(num_frames))
        self._num_videos += 1
        return self._num_videos - 1

    def close(self) -> str:
        """Finish the last shard, write captions.json and dataset.json (last, atomically); return the directory."""
        if self._closed:
            return self._final_dir or self.out_dir
        if self._num_videos == 0:
            self.abort()
            raise DataError(f"no videos were added to {self.out_dir!r}: a dataset needs at least one video")
        self._finish_shard()
        names = list(self._captions)
        atomic_write_text(os.path.join(self.out_dir, "captions.json"), json.dumps(names, ensure_ascii=False))
        self._written.append(os.path.join(self.out_dir, "captions.json"))
        keep = {s["bin"] for s in self._shards} | {s["index"] for s in self._shards}
        for name in os.listdir(self.out_dir):  # stale shards of an overwritten dataset
            if _SHARD_RE.match(name) and name not in keep:
                os.unlink(os.path.join(self.out_dir, name))
        top = dict(
            format=FORMAT_NAME, version=FORMAT_VERSION,
            codec=dict(name="h264", container="mp4", pix_fmt="yuv420p", crf=self.crf, gop=self.gop,
                       preset=self.preset),
            num_videos=self._num_videos,
            num_frames=int(sum(s["num_frames"] for s in self._shards)),
            num_bytes=int(sum(s["num_bytes"] for s in self._shards)),
            fps=self.fps,
            resolution=list(next(iter(self._sizes))) if len(self._sizes) == 1 else None,
            min_frames=self._frames_min, max_frames=self._frames_max,
            class_names=self.class_names,
            captions="captions.json", num_captions=len(names),
            shards=self._shards,
            meta=self.meta,
        )
        atomic_write_text(os.path.join(self.out_dir, "dataset.json"), json.dumps(top, indent=1, ensure_ascii=False))
        self._closed = True
        if self._final_dir is not None:  # built aside: now replace the old dataset
            replace_dataset(self.out_dir, self._final_dir)
            self.out_dir, self._final_dir = self._final_dir, None
        return self.out_dir

    def finish_shard(self) -> None:
        """Make the open shard final now (`on_shard` is called); the next `add` starts a new shard.

        Shard boundaries normally follow from `max_videos_per_shard` / `max_shard_bytes` alone;
        call this only after the last video, when the dataset is not to be published yet.
        """
        if self._closed:
            raise DataError("ShardWriter is closed: create a new writer to add videos")
        self._finish_shard()

    @property
    def num_shards(self) -> int:
        """Finished shards so far (adopted ones included)."""
        return len(self._shards)

    @property
    def shards(self) -> list[dict]:
        """Entries of the finished shards (bin, index, num_videos, num_frames, num_bytes)."""
        return [dict(s) for s in self._shards]

    def abort(self) -> None:
        """Stop writing and remove every file this writer created (no dataset.json is written)."""
        self._drop_open_shard()
        for p in self._written:
            try:
                os.unlink(p)
            except OSError:
                pass
        self._written = []
        self._closed = True
        if self._final_dir is not None:  # the old dataset was never touched
            shutil.rmtree(self.out_dir, ignore_errors=True)

    # ---------------------------------------------------------------- internals
    def _drop_open_shard(self) -> None:
        if self._bin is not None:
            self._bin.close()
            self._bin = None
            try:
                os.unlink(self._tmp_bin)
            except OSError:
                pass
        self._records, self._offset = [], 0

    def _remove_stale(self, keep: int) -> None:
        """Remove temporary files of interrupted writers and (when resuming) shards after the first `keep`."""
        for name in os.listdir(self.out_dir):
            m = _SHARD_RE.match(name)
            stale_tmp = _TMP_RE.match(name)
            if stale_tmp or (keep and m and int(name[6:].split(".")[0]) >= keep):
                try:
                    os.unlink(os.path.join(self.out_dir, name))
                except OSError:
                    pass

    def _adopt_shard(self, i: int) -> None:
        """Take over finished shard `i` of an earlier writer (resume)."""
        name = _shard_name(i)
        bin_path, index_path = os.path.join(self.out_dir, name + ".bin"), os.path.join(self.out_dir, name + ".jsonl")
        try:
            with open(index_path, encoding="utf-8") as f:
                records = [json.loads(line) for line in f if line.strip()]
            size = os.path.getsize(bin_path)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"cannot resume {self.out_dir!r}: shard {name} is missing or corrupt ({e}); "
                            "start over with `hpdm prepare --overwrite`") from None
        offset = 0
        try:
            for r in records:
                if int(r["offset"]) != offset or int(r["length"]) < 1:
                    raise ValueError(f"video at offset {r['offset']} does not follow the previous one")
                offset += int(r["length"])
                cid = self._captions.setdefault(str(r["caption"]), len(self._captions))
                if cid != int(r["caption_id"]):
                    raise ValueError("caption ids are not in order of first appearance")
                self._sizes.add((int(r["height"]), int(r["width"])))
                n = int(r["num_frames"])
                self._frames_min = min(self._frames_min, n) if self._num_videos else n
                self._frames_max = max(self._frames_max, n)
                self._num_videos += 1
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"cannot resume {self.out_dir!r}: shard index {name}.jsonl is corrupt ({e}); "
                            "start over with `hpdm prepare --overwrite`") from None
        if not records or size != offset:
            raise DataError(f"cannot resume {self.out_dir!r}: shard {name}.bin has {size} bytes, its index "
                            f"lists {offset}; start over with `hpdm prepare --overwrite`")
        self._shards.append(dict(bin=name + ".bin", index=name + ".jsonl", num_videos=len(records),
                                 num_frames=int(sum(int(r["num_frames"]) for r in records)), num_bytes=offset))

    def _open_shard(self) -> None:
        name = _shard_name(len(self._shards))
        self._tmp_bin = os.path.join(self.out_dir, f".{name}.bin.{os.getpid()}.tmp")
        self._bin = open(self._tmp_bin, "wb")
        self._records, self._offset = [], 0

    def _finish_shard(self) -> None:
        if self._bin is None:
            return
        name = _shard_name(len(self._shards))
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        self._bin = None
        final_bin = os.path.join(self.out_dir, name + ".bin")
        os.replace(self._tmp_bin, final_bin)
        self._written.append(final_bin)
        index_path = os.path.join(self.out_dir, name + ".jsonl")
        atomic_write_text(index_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self._records))
        self._written.append(index_path)
        self._shards.append(dict(bin=name + ".bin", index=name + ".jsonl", num_videos=len(self._records),
                                 num_frames=int(sum(r["num_frames"] for r in self._records)),
                                 num_bytes=self._offset))
        self._records, self._offset = [], 0
        if self._on_shard is not None:
            self._on_shard(dict(self._shards[-1]))


# ============================================================================ reading

class _ShardIndex:
    """Parsed per-shard index: numeric columns as arrays, strings as lists."""

    __slots__ = ("offset", "length", "crc32", "num_frames", "height", "width", "fps", "label", "caption_id",
                 "caption", "source")

    def __init__(self, records: list[dict]):
        for key, dt in (("offset", np.int64), ("length", np.int64), ("crc32", np.int64), ("num_frames", np.int64),
                        ("height", np.int32), ("width", np.int32), ("fps", np.float64), ("label", np.int64),
                        ("caption_id", np.int64)):
            setattr(self, key, np.array([r[key] for r in records], dt))
        self.caption = [r["caption"] for r in records]
        self.source = [r["source"] for r in records]


class VideoDataset:
    """Random access to the videos of a dataset directory (opened read-only; picklable; lazy per-process files)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        top_path = os.path.join(self.path, "dataset.json")
        if os.path.isfile(self.path):
            raise DataError(f"{self.path!r} is a file, not a dataset directory: give the folder `hpdm prepare` wrote")
        if not os.path.isdir(self.path):
            where = "" if os.path.isabs(self.path) else f" (relative to the current directory {os.getcwd()})"
            raise DataError(f"dataset directory {self.path!r}{where} does not exist: create it with `hpdm prepare`")
        if not os.path.isfile(top_path):
            raise DataError(f"{self.path!r} is not an hpdm dataset (no dataset.json): create one with `hpdm prepare` "
                            "(an interrupted prepare leaves no dataset.json; re-run it)")
        try:
            with open(top_path, encoding="utf-8") as f:
                top = json.load(f)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{top_path!r} is corrupt ({e}): re-create the dataset with `hpdm prepare`") from None
        if not isinstance(top, dict) or top.get("format") != FORMAT_NAME:
            raise DataError(f"{top_path!r} is not an hpdm dataset description (format != {FORMAT_NAME!r}): "
                            "re-create the dataset with `hpdm prepare`")
        if top.get("version") != FORMAT_VERSION:
            raise DataError(f"{self.path!r} has dataset format version {top.get('version')!r}, this hpdm reads "
                            f"version {FORMAT_VERSION}: re-create it with this version's `hpdm prepare`")
        try:
            self._shards = list(top["shards"])
            counts = [int(s["num_videos"]) for s in self._shards]
            for i, s in enumerate(self._shards):
                p = _entry_path(self.path, s["bin"], f"shard {i} \"bin\"", top_path)
                index = _entry_path(self.path, s["index"], f"shard {i} \"index\"", top_path)
                if not os.path.isfile(p) or not os.path.isfile(index):
                    raise DataError(f"dataset {self.path!r} is incomplete: shard {s['bin']!r} or its index is "
                                    "missing; restore it or re-create the dataset with `hpdm prepare`")
                if os.path.getsize(p) != int(s["num_bytes"]):
                    raise DataError(f"dataset {self.path!r} is corrupt: {s['bin']!r} has {os.path.getsize(p)} "
                                    f"bytes, expected {s['num_bytes']}; re-create the dataset with `hpdm prepare`")
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{top_path!r} is corrupt (bad shard list: {e}): re-create the dataset") from None
        if "captions" in top:
            _entry_path(self.path, top["captions"], '"captions"', top_path)
        self.info = top
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if int(self._starts[-1]) != int(top.get("num_videos", -1)):
            raise DataError(f"{top_path!r} is corrupt: shard counts sum to {int(self._starts[-1])} videos but "
                            f"num_videos = {top.get('num_videos')}; re-create the dataset")
        self._index: dict[int, _ShardIndex] = {}
        self._files: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._pid = os.getpid()
        self._captions: list[str] | None = None

    # ---------------------------------------------------------------- pickling / files
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"] = collections.OrderedDict()  # never pickle file descriptors
        state["_index"] = {}
        state["_captions"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def close(self) -> None:
        """Close the open shard files (they reopen lazily on the next read)."""
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self._files.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._files = collections.OrderedDict()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass

    def __enter__(self) -> "VideoDataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: descriptors are shared with the parent; use our own
            self._files = collections.OrderedDict()
            self._pid = os.getpid()
        fd = self._files.get(shard)
        if fd is None:
            p = os.path.join(self.path, self._shards[shard]["bin"])
            try:
                fd = os.open(p, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except OSError as e:
                raise DataError(f"cannot open shard {p!r} ({e.strerror}): check the dataset directory") from None
            self._files[shard] = fd
            while len(self._files) > _MAX_OPEN_FILES:
                os.close(self._files.popitem(last=False)[1])
        else:
            self._files.move_to_end(shard)
        return fd

    # ---------------------------------------------------------------- metadata
    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def num_shards(self) -> int:
        """Number of shard files."""
        return len(self._shards)

    @property
    def class_names(self) -> list[str]:
        """Names of the integer labels (empty for an unlabelled dataset)."""
        return list(self.info.get("class_names") or [])

    @property
    def fps(self) -> float:
        """Frames per second the dataset was prepared at."""
        return float(self.info.get("fps") or 0.0)

    @property
    def resolution(self) -> tuple[int, int] | None:
        """(height, width) shared by every video, or None if sizes differ."""
        r = self.info.get("resolution")
        return (int(r[0]), int(r[1])) if r else None

    @property
    def meta(self) -> dict:
        """The free-form `meta` object stored by the writer."""
        return dict(self.info.get("meta") or {})

    def _locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if not (-n <= i < n):
            raise IndexError(f"video index {i} out of range for a dataset of {n} videos")
        i %= n
        s = bisect.bisect_right(self._starts, i) - 1
        return s, i - int(self._starts[s])

    def _shard_index(self, s: int) -> _ShardIndex:
        idx = self._index.get(s)
        if idx is None:
            p = os.path.join(self.path, self._shards[s]["index"])
            try:
                with open(p, encoding="utf-8") as f:
                    records = [json.loads(line) for line in f if line.strip()]
                idx = _ShardIndex(records)
            except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(f"shard index {p!r} is corrupt ({e}): re-create the dataset") from None
            if len(idx.offset) != int(self._shards[s]["num_videos"]):
                raise DataError(f"shard index {p!r} lists {len(idx.offset)} videos, dataset.json says "
                                f"{self._shards[s]['num_videos']}: re-create the dataset")
            self._index[s] = idx
        return idx

    def item(self, i: int) -> dict:
        """Metadata of video `i`: index, label, caption, caption_id, num_frames, height, width, fps, source, shard."""
        s, j = self._locate(int(i))
        x = self._shard_index(s)
        return dict(index=int(self._starts[s]) + j, label=int(x.label[j]), caption=x.caption[j],
                    caption_id=int(x.caption_id[j]), num_frames=int(x.num_frames[j]), height=int(x.height[j]),
                    width=int(x.width[j]), fps=float(x.fps[j]), source=x.source[j], shard=s)

    def _column(self, name: str) -> np.ndarray:
        return np.concatenate([getattr(self._shard_index(s), name) for s in range(self.num_shards)])

    def labels(self) -> np.ndarray:
        """Integer label of every video (-1 = none), shape [len(self)] (parses every shard index)."""
        return self._column("label")

    def num_frames(self) -> np.ndarray:
        """Frame count of every video, shape [len(self)] (parses every shard index)."""
        return self._column("num_frames")

    def caption_ids(self) -> np.ndarray:
        """Index into `captions()` of every video, shape [len(self)] (parses every shard index)."""
        return self._column("caption_id")

    def captions(self) -> list[str]:
        """The distinct captions of the dataset; a video's `caption_id` indexes this list."""
        if self._captions is None:
            p = os.path.join(self.path, self.info.get("captions", "captions.json"))
            try:
                with open(p, encoding="utf-8") as f:
                    caps = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                raise DataError(f"caption table {p!r} is missing or corrupt ({e}): re-create the dataset") from None
            if not isinstance(caps, list):
                raise DataError(f"caption table {p!r} is corrupt (not a list): re-create the dataset")
            self._captions = [str(c) for c in caps]
        return list(self._captions)

    # ---------------------------------------------------------------- reading
    def read_blob(self, i: int) -> bytes:
        """The stored mp4 bytes of video `i` (only that byte range is read; CRC-checked)."""
        s, j = self._locate(int(i))
        x = self._shard_index(s)
        off, n = int(x.offset[j]), int(x.length[j])
        fd = self._fd(s)
        if hasattr(os, "pread"):
            data = os.pread(fd, n, off)
        else:  # pragma: no cover - Windows
            os.lseek(fd, off, os.SEEK_SET)
            data = os.read(fd, n)
        if len(data) != n or (zlib.crc32(data) & 0xFFFFFFFF) != int(x.crc32[j]):
            raise DataError(f"video {i} in {self._shards[s]['bin']!r} is corrupt (short read or CRC mismatch): "
                            "re-create the dataset with `hpdm prepare`")
        return data

    def read_clip(self, i: int, start: int = 0, num_frames: int | None = None) -> np.ndarray:
        """Frames [start, start+num_frames) of video `i` as uint8 [T,H,W,3]; indices past the end wrap around.

        Wrapping loops short videos (frame k reads frame k mod num_frames), so an image
        (a one-frame item) becomes a still video of any length.
        """
        from hpdm_cli.io.video import VideoError, read_video_bytes  # noqa: PLC0415
        meta = self.item(i)
        n = meta["num_frames"]
        num = n if num_frames is None else int(num_frames)
        if num < 1 or start < 0:
            raise DataError(f"read_clip(start={start}, num_frames={num_frames}): need start >= 0, num_frames >= 1")
        start = int(start) % n
        blob = self.read_blob(i)
        try:
            if start + num <= n:
                frames = read_video_bytes(blob, start, num)
            else:
                frames = read_video_bytes(blob, 0, None)
        except VideoError as e:
            raise DataError(f"video {i} of {self.path!r} cannot be decoded ({e}): re-create the dataset") from None
        if start + num <= n:
            if len(frames) != num:
                raise DataError(f"video {i} of {self.path!r} decoded to {len(frames)} frames from {start}, "
                                f"expected {num}: re-create the dataset")
            return frames
        if len(frames) != n:
            raise DataError(f"video {i} of {self.path!r} decoded to {len(frames)} frames, index says {n}: "
                            "re-create the dataset")
        return frames[(start + np.arange(num)) % n]

    def read_video(self, i: int) -> np.ndarray:
        """All frames of video `i` as uint8 [T,H,W,3]."""
        return self.read_clip(i, 0, None)

    def shard_indices(self, rank: int, world_size: int) -> np.ndarray:
        """The video indices rank `rank` of `world_size` reads: balanced, disjoint, contiguous, covering all."""
        if world_size < 1 or not (0 <= rank < world_size):
            raise DataError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")
        n = len(self)
        return np.arange(rank * n // world_size, (rank + 1) * n // world_size, dtype=np.int64)

    def __repr__(self) -> str:
        return (f"VideoDataset({self.path!r}: {len(self)} videos in {self.num_shards} shards, "
                f"{len(self.class_names)} classes, resolution {self.resolution}, fps {self.fps})")
