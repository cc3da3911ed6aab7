"""Background texture of a `shapes` clip: how much of it is the data's oriented stripes.

A `shapes` background is a flat colour plus a faint static texture: one oriented sinusoid of
2-5 cycles per frame side (the stripes, ~3/4 of the texture's variance) and three waves of
0.5-2.5 cycles (`hpdm_cli/data/shapes.py`). A model that has learnt the data draws the stripes;
one that has not draws mottled blobs of the right energy but no orientation. The measure is the
share of the background's variance that the best single sinusoid in the stripes' frequency band
explains (R^2 of a least-squares fit over a grid of orientations and frequencies, free phase):
real clips score ~0.6-0.8 at every pyramid level, unstructured noise near 0. No learned judge.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

FREQS = np.arange(1.75, 5.51, 0.125)             # cycles per min(H, W): the data draws 2-5
ANGLES = np.linspace(0.0, np.pi, 48, endpoint=False)
NEAR_BACKGROUND = 60.0                             # RGB distance: texture spans < +-25, objects are >= 150 away


def static_background(clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The clip's static background (per-pixel temporal median, [H, W] luminance) and where it is reliable.

    A pixel is reliable when its median is near the clip's background colour (the median of all
    medians; an object that sits on a pixel for most of the clip fails this) and it stays near its
    median in at least 3/4 of the frames (the moving object covers it for less than a quarter).
    """
    x = np.asarray(clip, np.float32)                                    # [T, H, W, 3]
    med = np.median(x, axis=0)                                          # [H, W, 3]
    colour = np.median(med.reshape(-1, 3), axis=0)
    steady = (np.linalg.norm(x - med[None], axis=-1) <= NEAR_BACKGROUND).mean(0) >= 0.75
    keep = steady & (np.linalg.norm(med - colour, axis=-1) <= NEAR_BACKGROUND)
    return med.mean(-1), keep


def stripe_fit(clip) -> float:
    """R^2 of the best oriented sinusoid (2-5 cycles per frame side) fitted to a clip's static background.

    `clip` is uint8 [T, H, W, 3] (a single frame works too, unmasked: its object counts as texture).
    Returns NaN when fewer than a quarter of the pixels are reliable background.
    """
    a = np.asarray(clip)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"clip has shape {list(a.shape)}: expected [T, H, W, 3] (RGB)")
    bg, keep = static_background(a)
    h, w = bg.shape
    if keep.sum() < 0.25 * h * w:
        return float("nan")
    m = float(min(h, w))
    mask = keep.astype(np.float64)
    zimg = np.where(keep, bg - bg[keep].mean(), 0.0)
    n = float(keep.sum())
    tss = float((zimg * zimg).sum())
    if tss <= 1e-6:
        return 0.0
    # For every wave vector k (orientation x frequency) the sums over the kept pixels p of e^{i phi},
    # e^{2 i phi} and z e^{i phi}, phi = 2 pi k . (u, v); e^{i phi} factorises over rows and columns,
    # so each sum is a matrix product over the image instead of a [K, pixels] table of sines.
    kx = (np.cos(ANGLES)[:, None] * FREQS[None]).ravel()                                # [K]
    ky = (np.sin(ANGLES)[:, None] * FREQS[None]).ravel()
    ex = np.exp(2j * np.pi * kx[:, None] * ((np.arange(w) + 0.5) / m)[None])          # [K, W]
    ey = np.exp(2j * np.pi * ky[:, None] * ((np.arange(h) + 0.5) / m)[None])          # [K, H]

    def wave_sum(img: np.ndarray, power: int = 1) -> np.ndarray:
        return ((img @ (ex ** power).T) * (ey ** power).T).sum(0)                     # [K]

    s1, s2, zs = wave_sum(mask), wave_sum(mask, 2), wave_sum(zimg)
    # least squares on the centred regressors sin(phi), cos(phi) (the fit has a free constant)
    ss = (n - s2.real) / 2 - s1.imag ** 2 / n
    cc = (n + s2.real) / 2 - s1.real ** 2 / n
    sc = s2.imag / 2 - s1.imag * s1.real / n
    sz, cz = zs.imag, zs.real                      # z has zero mean: centring the regressors changes nothing
    det = np.maximum(ss * cc - sc * sc, 1e-9)
    explained = (cc * sz * sz - 2 * sc * sz * cz + ss * cz * cz) / det
    return float(np.clip(explained.max() / tss, 0.0, 1.0))


def stripe_summary(clips: Iterable) -> dict:
    """Mean and median stripe R^2 over clips (NaN ones skipped) and how many clips were measurable."""
    return stripe_stats([stripe_fit(c) for c in clips])


def stripe_stats(values) -> dict:
    """`stripe_summary` of per-clip `stripe_fit` values already computed."""
    vals = np.asarray(values, np.float64)
    ok = vals[~np.isnan(vals)]
    if ok.size == 0:
        return {"n": 0, "mean": float("nan"), "median": float("nan")}
    return {"n": int(ok.size), "mean": float(ok.mean()), "median": float(np.median(ok))}
