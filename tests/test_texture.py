"""The background-stripes measure (hpdm_cli/eval/texture.py): real shapes clips score high, unstructured texture low."""

import numpy as np
import pytest

from hpdm_cli.data.shapes import render_shapes_video
from hpdm_cli.eval.texture import static_background, stripe_fit, stripe_summary


def _real(i, size=64, frames=8):
    return render_shapes_video(i, frames=frames, height=size, width=size, seed=3, split="heldout")[0]


def _box(v, k):
    t, h, w, c = v.shape
    return v.reshape(t, h // k, k, w // k, k, c).astype(np.float32).mean((2, 4)).round().astype(np.uint8)


def _flat_plus(texture, colour=(118, 118, 118), frames=8):
    img = np.asarray(colour, np.float32)[None, None] + texture[..., None]
    return np.repeat(np.clip(img, 0, 255).round().astype(np.uint8)[None], frames, 0)


def test_real_clips_score_high_at_full_and_base_resolution():
    full = [stripe_fit(_real(i)) for i in range(12)]
    base = [stripe_fit(_box(_real(i), 4)) for i in range(12)]
    assert min(full) > 0.5 and np.mean(full) > 0.65
    assert np.mean(base) > 0.45


def test_unstructured_texture_scores_low_and_a_pure_stripe_scores_one():
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(12):
        b = gaussian_filter(rng.normal(size=(16, 16)), 1.0)
        blobs.append(stripe_fit(_flat_plus(8 * b / b.std())))
    assert np.mean(blobs) < 0.3
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    stripe = 10 * np.sin(2 * np.pi * 3.0 * (0.6 * xx + 0.8 * yy) / 32 + 1.0)
    assert stripe_fit(_flat_plus(stripe)) > 0.97
    assert stripe_fit(_flat_plus(np.zeros((16, 16)))) == 0.0


def test_the_moving_object_is_not_counted_as_background():
    v = _real(5)
    _, keep = static_background(v)
    attrs = render_shapes_video(5, frames=8, height=64, width=64, seed=3, split="heldout")[3]
    cx, cy = attrs["centres"][4]
    assert not keep[int(cy), int(cx)]              # the object's centre mid-clip is never background
    assert keep.mean() > 0.5


def test_summary_skips_unmeasurable_clips_and_rejects_bad_shapes():
    obj = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)   # nothing stays put
    s = stripe_summary([obj, _real(1, size=32)])
    assert s["n"] == 1 and s["mean"] > 0.4
    with pytest.raises(ValueError, match="expected"):
        stripe_fit(np.zeros((4, 16, 16), np.uint8))


def test_stripe_fit_is_the_least_squares_r2_over_its_grid():
    """On masked noise (the regressors no longer orthogonal), the best R^2 of a brute-force lstsq over the same
    angles and frequencies."""
    from hpdm_cli.eval.texture import ANGLES, FREQS
    rng = np.random.default_rng(0)
    h = w = 24
    clip = np.repeat(np.clip(120 + rng.normal(0, 8, (h, w)), 0, 255)[None, ..., None], 3, -1).astype(np.uint8)
    clip[:, :5, :7] = 255                                           # an object: masked out
    bg, keep = static_background(clip)
    assert not keep.all() and keep.mean() > 0.8
    bg = bg.astype(np.float64)
    u, v = ((np.arange(w) + 0.5) / 24)[None], ((np.arange(h) + 0.5) / 24)[:, None]
    best = 0.0
    for a in ANGLES:
        for f in FREQS:
            ph = 2 * np.pi * f * (np.cos(a) * u + np.sin(a) * v)
            X = np.stack([np.sin(ph)[keep], np.cos(ph)[keep], np.ones(int(keep.sum()))], 1)
            z = bg[keep] - bg[keep].mean()
            r = z - X @ np.linalg.lstsq(X, z, rcond=None)[0]
            best = max(best, 1 - (r @ r) / (z @ z))
    assert stripe_fit(clip) == pytest.approx(best, rel=1e-6, abs=1e-9)


def test_pixels_an_object_covers_in_more_than_a_quarter_of_the_frames_are_not_background():
    clip = np.full((8, 16, 16, 3), 100, np.uint8)
    clip[:3, :4, :4] = 255                                          # an object on this corner in 3 of 8 frames
    _, keep = static_background(clip)
    assert not keep[:4, :4].any() and keep[8:, 8:].all()


def test_stripes_are_counted_in_cycles_of_the_shorter_side_and_a_frame_reads_as_a_clip():
    """Frequencies are per min(H, W) (the data draws 2-5 cycles per frame side): 3 cycles over the 32-pixel
    side of a 32x64 frame is a stripe; a single frame [H, W, 3] is measured as a one-frame clip."""
    yy, xx = np.mgrid[0:32, 0:64] + 0.5
    stripe = 10 * np.sin(2 * np.pi * 3.0 * yy / 32 + 0.5)
    clip = _flat_plus(stripe)
    assert stripe_fit(clip) > 0.97
    assert stripe_fit(clip[0]) == pytest.approx(stripe_fit(clip[:1]))


def test_a_clip_with_under_a_quarter_of_steady_background_is_not_measured():
    """Fewer than a quarter of the pixels reliable background: NaN (about a sixth stay put here)."""
    rng = np.random.default_rng(2)
    clip = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    clip[:, :13, :13] = 118                                      # 169 of 1024 pixels steady
    assert np.isnan(stripe_fit(clip))
    clip[:, :20, :20] = 118                                      # 400 of 1024: measured
    assert not np.isnan(stripe_fit(clip))
