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
