"""Prompt faithfulness of `shapes` videos, read from the pixels (no learned judge).

`read_clip` says what a clip [T, H, W, 3] shows, with the palette, sizes and shape
templates of the procedural dataset (`hpdm_cli.data.shapes`):

* background: the nearest base colour to the median of the pixels away from the object
  (the texture is zero-mean, +-18 levels; base colours are >= 50 apart);
* object: pixels farther than half the dataset's minimum object/background contrast
  (150) from a per-pixel background (the median over the frames in which the pixel is
  away from the object, so the stripe texture cancels); the object colour is the nearest
  palette colour to the median of its most distinct pixels ("none" if farther than
  `MAX_COLOUR_DISTANCE`), and its coverage alpha in [0, 1] is the projection of each pixel
  on the background -> object colour line, kept on the largest connected component of
  each frame (the clip is not `valid` if no such blob of plausible size is found in half
  of the frames, or if more than `MAX_CLUTTER` of the object-like pixels lie outside it);
* direction: the least-squares slope of the coverage centroid over time, as the sign of
  its dominant axis; "none" if the displacement over the clip is below `MIN_TRAVEL` of
  min(H, W) (rendered clips travel at least 16-18% of it) or not mostly along one axis;
* shape: per frame, the renderer's own template (`shape_coverage`) of each shape at the
  object's centroid, with the size that matches its area, compared by soft IoU; the
  clip's shape is the majority over frames ("none" if the mean best IoU is below
  `MIN_SHAPE_IOU`: a blob that fits no template well is no shape).

`score_clips` gives per-attribute accuracy against captions (or attribute dicts) and
`swapped_floor` the same against a derangement of the captions (what a model ignoring its
prompt would score). On rendered clips (128-256 a size) the reader was right on every
attribute of every clip at 16x64x64, 8x32x32 and 4x16x16, and at 16x64x64 (crf 18 and 28)
and 8x32x32 after an H.264 round trip; at 16x16 after H.264 (4:2:0 chroma on an object
of 3 pixels radius) shape drops to 90-96%, the other attributes stay right.
tests/test_faithfulness.py checks the first cases on fewer clips.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

from hpdm_cli.data.shapes import (BACKGROUNDS, COLOURS, DIRECTIONS, SHAPE_AREAS, SHAPES, _MIN_CONTRAST,
                                  shape_coverage)
from hpdm_cli.data.shards import DataError
from hpdm_cli.io.video import VideoError

__all__ = ["ClipReading", "read_clip", "parse_shapes_caption", "score_clips", "accuracy_by_asked", "swapped_floor",
           "derangement", "ATTRIBUTES", "MIN_TRAVEL", "MIN_SHAPE_IOU", "MAX_COLOUR_DISTANCE", "MAX_CLUTTER"]

ATTRIBUTES = ("colour", "shape", "direction", "background")
MIN_TRAVEL = 0.08          # minimum displacement over the clip, as a fraction of min(H, W)
MIN_AXIS_RATIO = 2.0       # the dominant axis of motion must be this many times the other
MIN_SHAPE_IOU = 0.6        # mean best-template soft IoU below which the shape is "none"
MAX_COLOUR_DISTANCE = 75.0  # RGB distance to the nearest palette colour above which the colour is "none"
MAX_CLUTTER = 0.5          # fraction of object-like pixels outside the object above which the clip is not valid
_OBJECT_DISTANCE = 0.5 * _MIN_CONTRAST   # RGB distance from the background that marks object pixels
_MIN_AREA = 0.25 * min(SHAPE_AREAS.values()) * 0.16 ** 2   # of min(H, W)**2: a quarter of the smallest object
_MAX_AREA = 0.5                                              # of H * W: larger is no object on a background
_COLOUR_NAMES = list(COLOURS)
_COLOUR_RGB = np.array([COLOURS[c] for c in _COLOUR_NAMES], np.float32)
_BACKGROUND_NAMES = list(BACKGROUNDS)
_BACKGROUND_RGB = np.array([BACKGROUNDS[b] for b in _BACKGROUND_NAMES], np.float32)
_CAPTION_RE = re.compile(r"^\s*an?\s+(\w+)\s+(\w+)\s+moving\s+(\w+)(?:\s+on\s+an?\s+(\w+)\s+background)?\s*\.?\s*$",
                         re.IGNORECASE)


@dataclass
class ClipReading:
    """What a clip shows: the four attributes (None / "none" where unreadable) and the measurements behind them."""

    valid: bool                    # one object found in at least half of the frames, with little clutter around
    reason: str                    # why not valid ("" if valid)
    colour: str | None             # None if no object, "none" if no palette colour is near
    shape: str | None              # None if no object, "none" if it matches no template
    direction: str | None          # None if no object, "none" if it does not move along one axis
    background: str
    background_rgb: tuple[float, float, float]
    object_rgb: tuple[float, float, float] | None = None
    colour_distance: float = float("nan")       # RGB distance of the object colour to the chosen palette colour
    shape_iou: float = float("nan")             # mean over frames of the best template's soft IoU
    shape_votes: dict = field(default_factory=dict)
    displacement: tuple[float, float] = (float("nan"), float("nan"))   # (dx, dy) pixels over the clip
    area: float = float("nan")                  # mean object area over the frames it is found in, / (H * W)
    area_cv: float = float("nan")               # std / mean of the object's area over frames
    found_frames: int = 0
    clutter: float = float("nan")               # fraction of object-like pixels outside the object's blob
    frame_size: int = 0                         # min(H, W) of the clip

    def as_dict(self) -> dict:
        """A JSON-ready dict of the reading."""
        return asdict(self)


def _check_clip(clip) -> np.ndarray:
    """Validate a clip as uint8 [T, H, W, 3] with H, W >= 8 and return it."""
    a = np.asarray(clip)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise VideoError(f"clip has shape {list(a.shape)}: expected [T, H, W, 3] (RGB)")
    if a.dtype != np.uint8:
        raise VideoError(f"clip has dtype {a.dtype}: expected uint8 (convert with np.clip(x, 0, 255).astype(np.uint8))")
    if a.shape[0] < 1 or min(a.shape[1:3]) < 8:
        raise VideoError(f"clip has shape {list(a.shape)}: need at least one frame of at least 8x8 pixels")
    return a


def _nearest(rgb: np.ndarray, palette: np.ndarray) -> tuple[int, float]:
    """Index of the palette colour nearest to `rgb` and its distance."""
    d = np.linalg.norm(palette - rgb[None], axis=1)
    i = int(np.argmin(d))
    return i, float(d[i])


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Binary dilation of [..., H, W] masks by one pixel (3x3 square)."""
    from scipy import ndimage  # noqa: PLC0415
    structure = np.zeros((3,) * mask.ndim, bool)
    structure[(1,) * (mask.ndim - 2)] = True
    return ndimage.binary_dilation(mask, structure=structure)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2-D boolean mask (empty if the mask is)."""
    from scipy import ndimage  # noqa: PLC0415
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _frame_shape(alpha: np.ndarray, cx: float, cy: float, area: float) -> tuple[str, float]:
    """The shape template (at the object's centroid, area-matched size) that best fits `alpha`, and its IoU."""
    h, w = alpha.shape
    best, best_iou = SHAPES[0], -1.0
    radius = float(np.sqrt(area / min(SHAPE_AREAS.values()))) * 1.6 + 2
    y0, y1 = max(int(cy - radius), 0), min(int(np.ceil(cy + radius)) + 1, h)
    x0, x1 = max(int(cx - radius), 0), min(int(np.ceil(cx + radius)) + 1, w)
    crop = alpha[y0:y1, x0:x1]
    outside = float(alpha.sum() - crop.sum())
    for name in SHAPES:
        size = float(np.sqrt(area / SHAPE_AREAS[name]))
        tpl = shape_coverage(name, cx, cy, size, y1 - y0, x1 - x0, y0=y0, x0=x0)
        iou = float(np.minimum(crop, tpl).sum()) / (float(np.maximum(crop, tpl).sum()) + outside)
        if iou > best_iou:
            best, best_iou = name, iou
    return best, best_iou


def _masked_median(x: np.ndarray, keep: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Per-pixel median over time of x [T,H,W,3] where keep [T,H,W]; `fallback` where no frame is kept."""
    srt = np.sort(np.where(keep[..., None], x, np.inf), axis=0)   # kept values first
    n = keep.sum(0)[None, ..., None]
    lo = np.take_along_axis(srt, np.maximum((n - 1) // 2, 0), axis=0)[0]
    hi = np.take_along_axis(srt, np.minimum(n // 2, x.shape[0] - 1), axis=0)[0]
    return np.where(n[0] > 0, 0.5 * (lo + hi), fallback).astype(np.float32)


def read_clip(clip) -> ClipReading:
    """Read a `shapes` clip uint8 [T, H, W, 3]: its object colour, shape, motion direction and background."""
    a = _check_clip(clip)
    t, h, w, _ = a.shape
    m = min(h, w)
    x = a.astype(np.float32)
    # 1. background: a first guess from all pixels, then per pixel over the frames away from the object
    bg0 = np.median(x.reshape(-1, 3), axis=0)
    away = ~_dilate(np.linalg.norm(x - bg0, axis=-1) > _OBJECT_DISTANCE)
    bg_global = np.median(x[away], axis=0) if away.any() else bg0
    bg_pix = _masked_median(x, away, bg_global)
    bi, _ = _nearest(bg_global, _BACKGROUND_RGB)
    reading = ClipReading(valid=False, reason="", colour=None, shape=None, direction=None,
                          background=_BACKGROUND_NAMES[bi], background_rgb=tuple(float(v) for v in bg_global),
                          frame_size=m)
    # 2. object colour: the median of the most distinct object pixels
    diff = x - bg_pix[None]
    dist = np.linalg.norm(diff, axis=-1)
    cand = dist > _OBJECT_DISTANCE
    if not cand.any():
        reading.reason = "no object: no pixel differs from the background by half the minimum contrast"
        return reading
    obj = np.median(x[cand & (dist >= np.median(dist[cand]))], axis=0)
    ci, cd = _nearest(obj, _COLOUR_RGB)
    reading.object_rgb = tuple(float(v) for v in obj)
    reading.colour = _COLOUR_NAMES[ci] if cd <= MAX_COLOUR_DISTANCE else "none"
    reading.colour_distance = cd
    # 3. coverage alpha: projection on the background -> object line; per frame, its largest component
    span = obj[None, None] - bg_pix
    alpha = np.clip(np.einsum("thwc,hwc->thw", diff, span) / np.maximum((span * span).sum(-1), 1.0)[None], 0, 1)
    track = _track(alpha, cand, m)
    found = [k for k, c in enumerate(track.centres) if c is not None]
    reading.found_frames = len(found)
    if len(found) < max(1, (t + 1) // 2):
        reading.reason = (f"no object: an object of plausible size was found in {len(found)} of {t} frames "
                          f"(need at least half)")
        return reading
    reading.clutter = track.outside / max(track.inside + track.outside, 1)
    reading.valid = reading.clutter <= MAX_CLUTTER
    if not reading.valid:
        reading.reason = (f"no single object: {100 * reading.clutter:.0f}% of the pixels that differ from the "
                          f"background lie outside the largest blob")
    reading.area = float(np.mean(track.areas)) / (h * w)
    reading.area_cv = float(np.std(track.areas) / np.mean(track.areas))
    reading.shape_votes = track.votes
    reading.shape_iou = float(np.mean(track.ious))
    best = max(track.votes, key=lambda s: (track.votes[s], track.fit[s]))  # majority of frames; ties: better fit
    reading.shape = best if reading.shape_iou >= MIN_SHAPE_IOU else "none"
    # 4. direction: least-squares slope of the centroid over time
    reading.displacement, reading.direction = _direction(found, track.centres, t, m)
    return reading


@dataclass
class _Track:
    """The object followed frame by frame: centroids (None where not found), areas and shape votes."""

    centres: list
    areas: list = field(default_factory=list)
    votes: dict = field(default_factory=dict)       # shape name -> frames voting for it
    fit: dict = field(default_factory=dict)         # shape name -> summed IoU of its votes
    ious: list = field(default_factory=list)
    inside: int = 0                                 # object-coloured pixels inside / outside the blob
    outside: int = 0


def _track(alpha: np.ndarray, cand: np.ndarray, m: int) -> _Track:
    """Follow the largest component of coverage alpha [T, H, W] > 0.5 through the frames of plausible size."""
    t, h, w = alpha.shape
    track = _Track(centres=[])
    lo, hi = _MIN_AREA * m * m, _MAX_AREA * h * w
    ys, xs = np.mgrid[:h, :w]
    for k in range(t):
        comp = _largest_component(alpha[k] > 0.5)
        blob = _dilate(comp)
        ak = np.where(blob, alpha[k], 0.0)
        area = float(ak.sum())
        if not (lo <= area and comp.sum() <= hi):
            track.centres.append(None)
            continue
        n_in = int((cand[k] & blob).sum())
        track.inside += n_in
        track.outside += int(cand[k].sum()) - n_in
        cx, cy = float((ak * xs).sum() / area), float((ak * ys).sum() / area)
        track.centres.append((cx, cy))
        track.areas.append(area)
        name, iou = _frame_shape(ak, cx, cy, area)
        track.votes[name] = track.votes.get(name, 0) + 1
        track.fit[name] = track.fit.get(name, 0.0) + iou
        track.ious.append(iou)
    return track


def _direction(found: list, centres: list, t: int, m: int):
    """(displacement (dx, dy) over the clip, direction name) from the centroids' least-squares slope."""
    if len(found) < 2:
        return (float("nan"), float("nan")), "none"
    ts = np.array(found, np.float64)
    cs = np.array([centres[k] for k in found], np.float64)
    tc = ts - ts.mean()
    slope = (tc[:, None] * (cs - cs.mean(0))).sum(0) / (tc * tc).sum()
    dx, dy = (float(v) * (t - 1) for v in slope)
    major, minor = (abs(dx), abs(dy)) if abs(dx) >= abs(dy) else (abs(dy), abs(dx))
    if major < MIN_TRAVEL * m or major < MIN_AXIS_RATIO * minor:
        return (dx, dy), "none"
    if abs(dx) >= abs(dy):
        return (dx, dy), "right" if dx > 0 else "left"
    return (dx, dy), "down" if dy > 0 else "up"


def parse_shapes_caption(caption: str) -> dict:
    """Split a shapes caption ("a red circle moving right [on a gray background]") into its attributes."""
    mt = _CAPTION_RE.match(str(caption))
    if mt is None:
        raise DataError(f"caption {caption!r} is not a shapes prompt: expected "
                        "'a COLOUR SHAPE moving DIRECTION [on a BACKGROUND background]'")
    colour, shape, direction, background = (g.lower() if g else None for g in mt.groups())
    for value, names, what in ((colour, _COLOUR_NAMES, "colour"), (shape, SHAPES, "shape"),
                               (direction, DIRECTIONS, "direction")):
        if value not in names:
            raise DataError(f"caption {caption!r}: unknown {what} {value!r}; expected one of {', '.join(names)}")
    if background is not None and background not in _BACKGROUND_NAMES:
        raise DataError(f"caption {caption!r}: unknown background {background!r}; "
                        f"expected one of {', '.join(_BACKGROUND_NAMES)}")
    return dict(colour=colour, shape=shape, direction=direction, background=background)


def _attrs(item) -> dict:
    """Attributes of a caption string or an attribute dict (colour, shape, direction, optional background)."""
    if isinstance(item, str):
        return parse_shapes_caption(item)
    if isinstance(item, dict):
        missing = [k for k in ("colour", "shape", "direction") if k not in item]
        if missing:
            raise DataError(f"attributes {item!r} lack {', '.join(missing)}")
        return {k: item.get(k) for k in ATTRIBUTES}
    raise DataError(f"expected a caption string or an attribute dict, got {type(item).__name__}")


def score_clips(clips: Iterable, captions_or_attrs: Sequence, *, keep_readings: bool = False) -> dict:
    """Per-attribute accuracy of `read_clip` on `clips` against their captions (or attribute dicts).

    `clips` holds uint8 [T, H, W, 3] arrays or `ClipReading`s already read (to score one
    reading against several caption sets, e.g. the true ones and `swapped_floor`'s).
    Returns n, valid (fraction with an object found), colour / shape / direction /
    background / all (colour, shape and direction all right) accuracy, the chance levels
    of a prompt-blind reader, per-attribute confusion counts {asked: {read: n}}, the
    mean shape IoU, median travel, object area and area variation, and with `keep_readings` every
    reading. Compare travel and area with the real clips' (objects too large or too slow are
    faithful to the prompt and still wrong).
    """
    targets = [_attrs(c) for c in captions_or_attrs]
    hits = {k: 0 for k in (*ATTRIBUTES, "all")}
    counted = {k: 0 for k in (*ATTRIBUTES, "all")}
    confusion: dict = {k: {} for k in ATTRIBUTES}
    readings, n, valid = [], 0, 0
    ious, travels, areas, area_cvs = [], [], [], []
    for clip in clips:
        if n >= len(targets):
            raise DataError(f"more clips than captions ({len(targets)})")
        r = clip if isinstance(clip, ClipReading) else read_clip(clip)
        want = targets[n]
        n += 1
        valid += r.valid
        got = dict(colour=r.colour, shape=r.shape, direction=r.direction, background=r.background)
        for k in ATTRIBUTES:
            if want[k] is None:
                continue
            counted[k] += 1
            hits[k] += got[k] == want[k]
            row = confusion[k].setdefault(want[k], {})
            row[str(got[k])] = row.get(str(got[k]), 0) + 1
        counted["all"] += 1
        hits["all"] += all(got[k] == want[k] for k in ("colour", "shape", "direction"))
        if r.valid:
            ious.append(r.shape_iou)
            travels.append(float(np.hypot(*r.displacement)) / r.frame_size)
            areas.append(r.area)
            area_cvs.append(r.area_cv)
        if keep_readings:
            readings.append(r.as_dict())
    if n != len(targets):
        raise DataError(f"{n} clips but {len(targets)} captions: give one caption per clip")
    out = dict(n=n, valid=valid / n if n else float("nan"))
    for k in (*ATTRIBUTES, "all"):
        out[k] = hits[k] / counted[k] if counted[k] else float("nan")
    out["chance"] = dict(colour=1 / len(COLOURS), shape=1 / len(SHAPES), direction=1 / len(DIRECTIONS),
                         all=1 / (len(COLOURS) * len(SHAPES) * len(DIRECTIONS)))
    out["confusion"] = confusion
    out["shape_iou"] = float(np.mean(ious)) if ious else float("nan")
    out["travel"] = float(np.median(travels)) if travels else float("nan")   # of min(H, W)
    out["area"] = float(np.median(areas)) if areas else float("nan")            # of H * W
    out["area_cv"] = float(np.median(area_cvs)) if area_cvs else float("nan")
    if keep_readings:
        out["readings"] = readings
    return out


def accuracy_by_asked(score: dict, attr: str = "direction") -> dict:
    """Per asked value of `attr`, [clips read as asked, clips asked for it], from `score_clips`' confusion counts.

    The overall accuracy hides which values a model has learnt: a short run can move objects the asked way up
    and down while left and right stay at chance (docs/results.md, section 68).
    """
    asked = sorted(score["confusion"][attr].items())
    return {want: [read.get(want, 0), sum(read.values())] for want, read in asked}


def derangement(n: int, seed: int = 0) -> list[int]:
    """A random permutation of range(n) without fixed points (n >= 2), deterministic in `seed`."""
    if n < 2:
        raise DataError(f"a swapped-caption floor needs at least 2 clips, got {n}")
    rng = np.random.default_rng(seed)
    while True:
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return [int(i) for i in p]


def swapped_floor(clips: Sequence, captions_or_attrs: Sequence, *, seed: int = 0) -> dict:
    """`score_clips` against the captions of other clips (a derangement): the score of a prompt-blind model."""
    perm = derangement(len(captions_or_attrs), seed)
    return score_clips(clips, [captions_or_attrs[i] for i in perm])
