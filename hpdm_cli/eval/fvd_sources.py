"""The sides of an FVD evaluation: which clips a folder, prepared dataset, statistics file or generated stream gives.

The protocol (decoding, clip, which clips in which order) is stated in `hpdm_cli.eval.fvd`, which
also holds the statistics and the distance; this module reads the sources under it and keeps the
real side's statistics cache. It imports PyAV only through `hpdm_cli.io.video`, and only when a
video file or a prepared dataset is read.

Caching: statistics of the real side are stored under `cache_dir` (default
$HPDM_CACHE_DIR or $XDG_CACHE_HOME/hpdm/fvd, i.e. ~/.cache/hpdm/fvd), keyed by a
fingerprint of the source (a prepared dataset: its dataset.json and shard indexes, which
hold every video's CRC-32; a folder: every candidate video's relative path, size and
modification time), the protocol (version, decode, frames, stride, resolution, precision),
num, seed and the detector's SHA-256. A second evaluation against the same data only
extracts the fake side. A cache file that cannot be read (truncated, corrupt) is a miss:
it is recomputed and replaced atomically. Statistics files (`.npz`: mu, sigma, num and a
JSON `meta`; no pickles) can also be written explicitly (`save_real` / `save_fake`) and given
as a side.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from ..data.prepare.sources import VIDEO_EXTENSIONS
from ..data.shards import is_dataset
from ..device import available_cpus
from ..errors import WARNING
from ..train.run_dir import is_checkpoint_dir, is_trained_run
from . import FVDError
from .fvd import STATS_FORMAT, STATS_VERSION, EVAL_DECODE, FVDStats, I3DExtractor, Protocol, SideReport, selection_order
from .i3d import MIN_FRAMES

__all__ = [
    "Clip", "DECODE_SUFFIXES", "Log", "Progress", "source_kind", "side_stats", "stream_stats", "video_clip",
    "cut_clip", "check_workers", "default_cache_dir",
]

DECODE_SUFFIXES = VIDEO_EXTENSIONS       # the video files a folder is searched for: those `hpdm prepare` takes
CACHE_ENV = "HPDM_CACHE_DIR"
_MAX_LISTED = 20                 # skipped clips named in a report

Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]        # progress(side, clips done, clips wanted)


def source_kind(path: str | os.PathLike) -> str:
    """What a --real / --fake path is: "stats" (.npz), "dataset", "checkpoint" or "folder"."""
    p = Path(path)
    if not p.exists():
        raise FVDError(f"{str(p)!r} does not exist: give a folder of videos, a prepared dataset, a statistics "
                       "file (.npz) or (for --fake) a checkpoint / run directory")
    if p.is_file():
        if p.suffix.lower() == ".npz":
            return "stats"
        if p.suffix.lower() == ".safetensors":
            return "checkpoint"
        raise FVDError(f"{str(p)!r} is a file: give a folder of videos, a prepared dataset, a statistics file "
                       "(.npz) or a checkpoint (.safetensors, a checkpoint or run directory)")
    if is_dataset(p):
        return "dataset"
    if is_checkpoint_dir(p) or is_trained_run(p):
        return "checkpoint"
    return "folder"


def _list_videos(folder: Path) -> list[str]:
    """Relative POSIX paths of every file with a video suffix below `folder` (hidden entries skipped), sorted.

    Symbolic links to directories are followed once (a link cycle is not walked twice).
    """
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in DECODE_SUFFIXES:
                found.append(Path(root, name).relative_to(folder).as_posix())
    return sorted(found)


def _folder_fingerprint(folder: Path, rels: Sequence[str]) -> str:
    h = hashlib.sha256(b"hpdm-fvd-folder\0")
    for rel in rels:
        try:
            st = os.stat(folder / rel)
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError as e:             # a dangling or looping link: skipped as unreadable when the clips are read
            stamp = f"unreadable {e.errno}"
        h.update(f"{rel}\0{stamp}\n".encode("utf-8"))
    return h.hexdigest()


def _dataset_fingerprint(ds) -> str:
    h = hashlib.sha256(b"hpdm-fvd-dataset\0")
    paths = [Path(ds.path) / "dataset.json"] + [Path(ds.path) / s["index"] for s in ds.info["shards"]]
    for p in paths:
        h.update(p.name.encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


@dataclass
class Clip:
    """One candidate clip of a side: its key, the protocol's frames (None when skipped) and why it was skipped."""

    key: str
    frames: Optional[np.ndarray]        # None: skipped
    why: str = ""                       # "short: 12 frames" / "unreadable: ..."


def cut_clip(frames: np.ndarray, protocol: Protocol) -> Optional[np.ndarray]:
    """The protocol's clip of decoded frames, or None if too short."""
    if protocol.frames is None:
        clip = frames[::protocol.stride]
        return clip if len(clip) >= MIN_FRAMES else None
    if len(frames) < protocol.span:
        return None
    return np.ascontiguousarray(frames[:protocol.span:protocol.stride])


def _long_enough(n: int, protocol: Protocol) -> bool:
    """Whether a video of n frames holds the protocol's clip."""
    if protocol.frames is None:
        return -(-n // protocol.stride) >= MIN_FRAMES
    return n >= protocol.span


def _short_reason(n: int, protocol: Protocol) -> str:
    """Why a video of n frames was skipped as too short for the protocol's clip."""
    need = protocol.span if protocol.frames is not None else (MIN_FRAMES - 1) * protocol.stride + 1
    return f"short: {n} frames, the clip needs {need}"


def video_clip(key: str, video: np.ndarray, protocol: Protocol) -> Clip:
    """The protocol's clip of an in-memory uint8 video [T, H, W, 3] (e.g. a generated one), or a skipped `Clip`."""
    clip = cut_clip(video, protocol)
    return Clip(key, clip, "" if clip is not None else _short_reason(len(video), protocol))


class _Reader:
    """Decodes the protocol's clip of candidate video `i` (thread-safe: one dataset handle per thread)."""

    def __init__(self, kind: str, path: Path, keys: list[str], protocol: Protocol):
        self.kind, self.path, self.keys, self.protocol = kind, path, keys, protocol
        self._local = threading.local()
        if kind == "dataset":
            from ..data.shards import VideoDataset
            self._frames = VideoDataset(path).num_frames()

    def __call__(self, i: int) -> Clip:
        key = self.keys[i]
        p = self.protocol
        from ..io.video import VideoError, read_video, read_video_bytes
        if self.kind == "dataset":
            from ..data.shards import DataError, VideoDataset
            n = int(self._frames[i])
            if not _long_enough(n, p):
                return Clip(key, None, _short_reason(n, p))
            ds = getattr(self._local, "ds", None)
            if ds is None:
                ds = self._local.ds = VideoDataset(self.path)
            try:                                 # the stored blob, decoded as the protocol says (not the loader's way)
                frames = read_video_bytes(ds.read_blob(i), 0, p.span, decode=EVAL_DECODE)
            except (DataError, VideoError) as e:
                return Clip(key, None, f"unreadable: {e}")
            if len(frames) < (n if p.span is None else p.span):
                return Clip(key, None, f"unreadable: decoded to {len(frames)} frames, the dataset index says {n}")
        else:
            try:
                frames, _ = read_video(self.path / key, 0, p.span, decode=EVAL_DECODE)
            except VideoError as e:
                return Clip(key, None, f"unreadable: {e}")
        clip = cut_clip(frames, p)
        if clip is None:
            return Clip(key, None, _short_reason(len(frames), p))
        return Clip(key, clip)


def _ordered_map(fn: Callable[[int], Clip], order: Sequence[int], workers: int,
                 window: int = 0) -> Iterator[Clip]:
    """fn over `order`, in order, with up to max(window, 4 * workers) calls in flight on a thread pool (0 = inline)."""
    if workers <= 0:
        for i in order:
            yield fn(i)
        return
    window = max(int(window), 4 * workers)
    with cf.ThreadPoolExecutor(workers, thread_name_prefix="hpdm-fvd-decode") as pool:
        pending: list[cf.Future] = []
        it = iter(order)
        try:
            for i in it:
                pending.append(pool.submit(fn, i))
                if len(pending) >= window:
                    break
            while pending:
                done = pending.pop(0).result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(fn, nxt))
                yield done
        finally:
            for f in pending:
                f.cancel()


def _collect(clips: Iterable[Clip], extractor: I3DExtractor, want: int, report: SideReport,
             progress: Optional[Progress]) -> np.ndarray:
    """Features of the first `want` usable clips of a stream; skipped ones are counted in `report`."""
    shapes: list = []
    done = [0]

    def usable() -> Iterator[np.ndarray]:
        got = 0
        for c in clips:
            if c.frames is None:
                if c.why.startswith("short"):
                    report.num_short += 1
                else:
                    report.num_unreadable += 1
                if len(report.skipped) < _MAX_LISTED:
                    report.skipped.append(f"{c.key}: {c.why}")
                continue
            shape = list(c.frames.shape[:3])
            if shape not in shapes and len(shapes) < 10:
                shapes.append(shape)
            yield c.frames
            got += 1
            if got >= want:
                return

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(report.role, done[0], want)

    t0 = time.perf_counter()
    try:
        feats = extractor.features(usable(), tick)
    finally:
        close = getattr(clips, "close", None)
        if close is not None:
            close()                     # stop decoding ahead
    report.seconds = time.perf_counter() - t0
    report.num = int(len(feats))
    report.clip_shapes = shapes
    report.clips_per_second = report.num / report.seconds if report.seconds > 0 else 0.0
    return feats


def default_cache_dir() -> Path:
    """$HPDM_CACHE_DIR, else $XDG_CACHE_HOME/hpdm/fvd, else ~/.cache/hpdm/fvd."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hpdm" / "fvd"


def _cache_file(cache_dir: Path, kind: str, path: Path, fingerprint: str, protocol: Protocol, sha: str) -> Path:
    key = dict(format=STATS_FORMAT, version=STATS_VERSION, kind=kind, fingerprint=fingerprint,
               protocol=protocol.key(), num=int(protocol.num), seed=int(protocol.seed), detector_sha256=sha)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in (path.resolve().name or "root"))[:40]
    return cache_dir / f"{kind}-{name}-{digest}.npz"


def side_stats(path: str | os.PathLike, protocol: Protocol, extractor: Optional[I3DExtractor], *, role: str = "real",
               cache_dir: str | os.PathLike | None = None, use_cache: bool = False, workers: Optional[int] = None,
               progress: Optional[Progress] = None, log: Optional[Log] = None) -> tuple[FVDStats, SideReport]:
    """Statistics of one side (a folder, a prepared dataset or a statistics file) under `protocol`.

    `use_cache` looks the statistics up in (and writes them to) `cache_dir` (folders and datasets).
    `extractor` may be None only for a statistics file. A checkpoint side is not read here: its
    clips are generated (`hpdm_cli.drivers.fvd`) and measured by `stream_stats`.
    """
    path = Path(path)
    kind = source_kind(path)
    report = SideReport(role=role, kind=kind, path=str(path), num_requested=int(protocol.num))
    if kind == "stats":
        t0 = time.perf_counter()
        st = FVDStats.load(path)
        report.num = report.num_candidates = st.num
        report.seconds = time.perf_counter() - t0
        report.fingerprint = str(st.source.get("fingerprint", ""))
        return st, report
    if extractor is None:
        raise FVDError(f"{str(path)!r} needs the I3D detector")
    workers = min(8, available_cpus()) if workers is None else check_workers(workers)
    if kind == "checkpoint":
        if role != "fake":
            raise FVDError(f"--{role} {str(path)!r} is a checkpoint: only --fake can be generated; give real "
                           "videos (a folder, a prepared dataset or a statistics file)")
        raise FVDError(f"--{role} {str(path)!r} is a checkpoint: its clips are generated by the eval-fvd driver "
                       "(hpdm_cli.drivers.fvd.evaluate_fvd), then measured with stream_stats")
    if kind == "dataset":
        from ..data.shards import VideoDataset
        ds = VideoDataset(path)
        keys = [str(i) for i in range(len(ds))]
        report.fingerprint = _dataset_fingerprint(ds)
    else:
        keys = _list_videos(path)
        if not keys and any(path.glob("shard-*.bin")):
            raise FVDError(f"--{role} {str(path)!r} is an unfinished hpdm dataset (shards, no dataset.json): run "
                           "its hpdm prepare command again to finish it")
        if not keys:
            raise FVDError(f"--{role} {str(path)!r} holds no videos (looked recursively for video files: "
                           f".mp4, .mkv, .mov, .avi, .webm and {len(DECODE_SUFFIXES) - 5} more suffixes)")
        report.fingerprint = _folder_fingerprint(path, keys)
    report.num_candidates = len(keys)
    cache_path = None
    if use_cache:
        cache_path = _cache_file(Path(cache_dir) if cache_dir else default_cache_dir(), kind, path,
                                 report.fingerprint, protocol, extractor.sha256)
        report.cache_path = str(cache_path)
        if cache_path.is_file():
            try:
                st = FVDStats.load(cache_path)
                cached = st.source
                report.num, report.num_short = st.num, int(cached.get("num_short", 0))
                report.num_unreadable = int(cached.get("num_unreadable", 0))
                report.skipped = list(cached.get("skipped", []))
                report.clip_shapes = list(cached.get("clip_shapes", []))
                report.cache = "hit"
                if log:
                    log(f"{role}: statistics of {report.num} clips from the cache ({cache_path})")
                return st, report
            except FVDError as e:
                if log:
                    log(WARNING + f"ignoring a broken cache file ({e}); recomputing")
    reader = _Reader(kind, path, keys, protocol)
    order = selection_order(keys, protocol.seed)
    stream = _ordered_map(reader, order, workers, window=2 * extractor.batch_size)   # decode ahead of the GPU
    feats = _collect(stream, extractor, protocol.num, report, progress)
    source = dict(kind=kind, path=str(path.resolve()), fingerprint=report.fingerprint,
                  num_candidates=report.num_candidates, num_short=report.num_short,
                  num_unreadable=report.num_unreadable, skipped=report.skipped, clip_shapes=report.clip_shapes)
    st = FVDStats.from_features(_check_count(feats, report), protocol, extractor.sha256, source)
    if cache_path is not None:
        try:
            st.save(cache_path)
            report.cache = "miss (written)"
        except FVDError as e:                     # the statistics are computed: a cache that cannot be written is
            report.cache = "miss (not written)"   # no reason to throw them away
            if log:
                log(WARNING + f"{e}; continuing without caching")
    elif not use_cache:
        report.cache = "off"
    return st, report


def stream_stats(clips: Iterable[Clip], protocol: Protocol, extractor: I3DExtractor, report: SideReport,
                 source: dict, progress: Optional[Progress] = None) -> FVDStats:
    """Statistics of the first `protocol.num` usable clips of a stream (e.g. generated clips); skips go to `report`."""
    feats = _collect(clips, extractor, protocol.num, report, progress)
    return FVDStats.from_features(_check_count(feats, report), protocol, extractor.sha256, source)


def _check_count(feats: np.ndarray, report: SideReport) -> np.ndarray:
    """At least two usable clips (a covariance needs two), else an FVDError with the counts."""
    if len(feats) < 2:
        raise FVDError(f"--{report.role} {report.path!r}: only {len(feats)} usable clip(s) of "
                       f"{report.num_candidates} video(s) ({report.num_short} too short, {report.num_unreadable} "
                       "unreadable): need at least 2" + (f"; e.g. {report.skipped[0]}" if report.skipped else ""))
    return feats


def check_workers(workers) -> int:
    """--workers: 0 (decode in the main thread) or a positive number of decoding threads."""
    if int(workers) != workers or workers < 0:
        raise FVDError(f"--workers {workers}: expected 0 (decode in the main thread) or a positive number of "
                       "decoding threads")
    return int(workers)
