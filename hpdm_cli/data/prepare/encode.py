"""One source file, in a worker: decode, turn upright, resample, fit and encode it (`process_source`).

A bad file never raises here: it comes back as {"status": "skipped", "reason": one line}. PyAV
is used only through `hpdm_cli.io.video`, imported when a file is processed.
"""

from __future__ import annotations

import os

from .geometry import TimeStats, resample, resize_plan

__all__ = ["process_source", "skip", "run_job"]


def skip(reason: str) -> dict:
    """The result of a source that is not stored, with its reason."""
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
        return skip("out of memory while decoding")
    except Exception as e:  # noqa: BLE001 (one bad file must never stop the run)
        from hpdm_cli.io.video import VideoError  # noqa: PLC0415
        if isinstance(e, VideoError):
            return skip(" ".join(str(e).split()))
        return skip(f"unexpected error ({type(e).__name__}: {' '.join(str(e).split())})")


def _process(path, kind, fps, size, fit, min_frames, short, crf, gop, preset, decoder_threads) -> dict:
    """`process_source` without the safety net."""
    from hpdm_cli.io.video import H264Encoder, VideoReader  # noqa: PLC0415
    try:
        nbytes = os.path.getsize(path)
    except OSError as e:
        return skip(f"cannot read the file ({e.strerror or e})")
    if nbytes == 0:
        return skip("empty file (0 bytes)")
    H, W = size
    notes: dict = {}
    stats = TimeStats()
    with VideoReader(path, threads=decoder_threads) as r:
        geo = resize_plan(r.height, r.width, H, W, fit)
        if r.rotation:
            notes["rotated"] = r.rotation
        if r.has_alpha:
            notes["transparency"] = 1
        if r.height < H or r.width < W:
            notes["upscaled"] = f"{r.height}x{r.width}"
        frames = r.frames(*geo.scaled)
        with H264Encoder(H, W, fps, crf=crf, gop=gop, preset=preset, threads=1) as enc:
            if kind == "image":
                _, rgb = next(frames)
                enc.write(geo.apply(rgb))
                stats.frames_in = 1
            else:
                for rgb in resample(frames, fps, r.fps, stats):
                    enc.write(geo.apply(rgb))
            n = enc.num_frames
            facts = dict(src_size=[r.height, r.width], src_fps=round(r.fps, 4), src_frames=r.decoded,
                         src_duration=round(r.duration, 4), codec=r.codec, audio=r.has_audio, rotation=r.rotation)
            if kind == "video":
                reason = _check_video(r, stats, notes, n, fps, min_frames, short)
                if reason:
                    return skip(reason)
            blob = enc.finish()
    return {"status": "ok", "blob": blob, "num_frames": n, "height": H, "width": W, "notes": notes, "facts": facts}


def _check_video(r, stats: TimeStats, notes: dict, n: int, fps: float, min_frames: int, short: str) -> str:
    """Why a decoded video is skipped (truncated, too short with short="skip"), else "" with its notes added."""
    declared = r.declared_frames
    if declared > 0 and r.decoded < declared - max(2, int(0.02 * declared)):
        return f"truncated or corrupt: decoded {r.decoded} of the {declared} frames the container declares"
    if declared <= 0 and r.duration > 0 and stats.span < 0.95 * r.duration - 0.2:
        return f"truncated or corrupt: decoded {stats.span:.2f} s of the {r.duration:.2f} s the container declares"
    if r.corrupt_frames:
        notes["corrupt_frames"] = r.corrupt_frames
    if stats.dropped:
        notes["dropped_timestamps"] = stats.dropped
    if stats.max_gap > 1.25 * stats.min_gap and stats.max_gap - stats.min_gap > 1e-3:
        notes["variable_frame_rate"] = f"{1 / stats.max_gap:.3g}-{1 / stats.min_gap:.3g} fps"
    if n < min_frames:
        if short == "skip":
            return f"too short: {n} frames at {fps:g} fps, fewer than the clip length {min_frames} (--short skip)"
        notes["looped"] = n
    return ""


def run_job(job: dict) -> dict:
    """Worker entry point (top-level so that spawned processes can unpickle it): `process_source` of one job."""
    args = dict(job)
    args.pop("index", None)
    path = args.pop("path")
    return process_source(path, **args)
