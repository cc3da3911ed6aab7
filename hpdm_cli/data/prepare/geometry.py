"""Where a source frame goes and when: the resize plan of a frame into the stored H x W (crop, pad or stretch),
and nearest-timestamp resampling of a video to the dataset's frame rate."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from .options import FITS, error

__all__ = ["ResizePlan", "resize_plan", "TimeStats", "resample", "resample_times"]


@dataclass(frozen=True)
class ResizePlan:
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


def resize_plan(src_h: int, src_w: int, out_h: int, out_w: int, fit: str) -> ResizePlan:
    """Resize plan of a src_h x src_w frame into out_h x out_w: crop (cover + centre crop), pad or stretch."""
    if fit == "stretch" or (src_h, src_w) == (out_h, out_w):
        return ResizePlan((out_h, out_w), (0, 0), (0, 0), (out_h, out_w))
    if fit == "crop":
        s = max(out_h / src_h, out_w / src_w)
        sh, sw = max(out_h, int(round(src_h * s))), max(out_w, int(round(src_w * s)))
        return ResizePlan((sh, sw), ((sh - out_h) // 2, (sw - out_w) // 2), (0, 0), (out_h, out_w))
    if fit == "pad":
        s = min(out_h / src_h, out_w / src_w)
        sh = min(out_h, max(1, int(round(src_h * s))))
        sw = min(out_w, max(1, int(round(src_w * s))))
        return ResizePlan((sh, sw), (0, 0), ((out_h - sh) // 2, (out_w - sw) // 2), (out_h, out_w))
    raise error(f"fit = {fit!r}: expected one of {', '.join(FITS)}")


@dataclass
class TimeStats:
    """What resampling saw of a video's timestamps (for notes and the truncation check)."""

    frames_in: int = 0
    dropped: int = 0                       # frames with a timestamp not after the previous one
    untimed: bool = False
    min_gap: float = math.inf
    max_gap: float = 0.0
    span: float = 0.0                      # seconds from the first frame to the end of the last


def resample_times(times: Sequence[float | None], fps: float, nominal_fps: float = 0.0) -> list[int]:
    """Source frame index of every output frame (the pure-index form of `resample`; for tests and docs).

    Output frame k shows the source frame whose timestamp is nearest to t0 + k / fps (ties:
    the earlier one). The output spans the source's duration (first timestamp to the end
    of the last frame, whose length is the median frame interval): round-half-down of
    duration x fps frames, at least one.
    """
    return list(resample(((t, i) for i, t in enumerate(times)), fps, nominal_fps, TimeStats()))


def resample(frames: Iterable, fps: float, nominal_fps: float, stats: TimeStats) -> Iterator:
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
