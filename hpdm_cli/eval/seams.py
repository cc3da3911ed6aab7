"""Tile seams from pixels: how much sharper a clip changes across the sampler's tile borders than elsewhere.

Sampling without overlap denoises each tile of the finest level on its own (docs/method.md,
section 9): where two tiles meet, nothing makes their pixels agree, and a seam shows as a straight
line along the tile grid. The measure is, per axis, the mean absolute grey step between adjacent
pixels (or frames) across tile borders divided by the mean step between every other adjacent pair,
both pooled over the clips, with every step capped at `CAP` grey levels: an object's edge (a step of
~150) then counts no more than a strong texture step, so that where a few edges happen to lie does
not decide the ratio. ~1 for clips whose content does not know the grid (128 real 32x128^2 `shapes`
clips: 1.003 at 16-pixel tiles, 1.012 at 32; uncapped 1.065 and 1.097), above 1 where borders are
visible. Overlapped tiles (the paper's Table 3) should bring it toward 1. No learned judge.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

AXES = ("t", "hw")
CAP = 16.0            # grey levels: above the texture's steps (amplitude ~25 over several pixels), far below an edge


def _steps(x: np.ndarray, axis: int, tile: int) -> tuple[float, float]:
    """(mean |step| across borders every `tile` positions along `axis`, mean |step| elsewhere); NaN if no border."""
    n = x.shape[axis]
    if tile < 1 or tile >= n:
        return float("nan"), float("nan")
    d = np.minimum(np.moveaxis(np.abs(np.diff(x, axis=axis)), axis, 0), CAP)   # step k: positions k and k + 1
    border = (np.arange(n - 1) + 1) % tile == 0
    return float(d[border].mean()), float(d[~border].mean())


def seam_steps(clip: np.ndarray, tile: Sequence[int]) -> dict:
    """The mean grey step across tile borders and elsewhere of one uint8 clip [T, H, W, 3] tiled (t, h, w) pixels.

    Returns {axis: (border step, other step)} for "t" (frames) and "hw" (rows and columns
    together), in grey levels 0-255.
    """
    x = np.asarray(clip, np.float32).mean(-1)                   # [T, H, W] grey
    t, h, w = (int(v) for v in tile)
    rows, cols = _steps(x, 1, h), _steps(x, 2, w)
    return {"t": _steps(x, 0, t), "hw": ((rows[0] + cols[0]) / 2, (rows[1] + cols[1]) / 2)}


def seam_ratio(steps: Sequence[dict]) -> dict:
    """Border ÷ other step ratios pooled over clips' `seam_steps`, per axis (NaN where no clip has a border)."""
    out = {}
    for k in AXES:
        b = np.array([s[k][0] for s in steps], np.float64)
        i = np.array([s[k][1] for s in steps], np.float64)
        ok = ~(np.isnan(b) | np.isnan(i))
        out[k] = float(b[ok].mean() / i[ok].mean()) if ok.any() and i[ok].mean() > 0 else float("nan")
    return out


def seam_summary(clips: Iterable[np.ndarray], tile: Sequence[int]) -> dict:
    """Seam ratios of clips for tiles (t, h, w) pixels: {"t": ..., "hw": ...}."""
    return seam_ratio([seam_steps(c, tile) for c in clips])
