"""The tile-seam measure (hpdm_cli/eval/seams.py): ~1 for clips that do not know the tile grid, above 1 with seams."""

import numpy as np

from hpdm_cli.data.shapes import render_shapes_video
from hpdm_cli.eval.seams import seam_steps, seam_summary


def _smooth(rng, t=16, h=64, w=64) -> np.ndarray:
    """A smooth random grey clip (waves at random phases and angles), uint8 [T, H, W, 3]."""
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    x = np.zeros((t, h, w))
    for _ in range(6):
        a, f, ph, v = rng.uniform(0, np.pi), rng.uniform(1, 5) / h, rng.uniform(0, 2 * np.pi), rng.uniform(-0.3, 0.3)
        x += np.sin(2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy + v * tt) + ph)
    g = np.clip(128 + 15 * x, 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, -1)


def test_clips_without_tiles_score_near_one_and_tiled_ones_above():
    rng = np.random.default_rng(0)
    clean = [_smooth(rng) for _ in range(8)]
    assert 0.85 < seam_summary(clean, (4, 16, 16))["hw"] < 1.15
    assert 0.85 < seam_summary(clean, (4, 16, 16))["t"] < 1.15
    # Each 16x16 tile (and each 4-frame block) shifted by its own brightness: a seam along every border.
    tiled = []
    for c in clean:
        off = rng.integers(-12, 13, (4, 4, 4)).repeat(4, 0).repeat(16, 1).repeat(16, 2)
        tiled.append(np.clip(c.astype(int) + off[..., None], 0, 255).astype(np.uint8))
    s = seam_summary(tiled, (4, 16, 16))
    assert s["hw"] > 1.5 and s["t"] > 3
    # Mostly invisible to a grid they do not lie on (tiles of 12 pixels, whose border at 48 is one of theirs).
    off_grid = seam_summary(tiled, (3, 12, 12))
    assert off_grid["hw"] < 1.3 and off_grid["t"] < 1.1


def test_a_tile_as_large_as_the_clip_has_no_border():
    c = _smooth(np.random.default_rng(1), t=4, h=16, w=16)
    assert all(np.isnan(v) for pair in seam_steps(c, (4, 16, 16)).values() for v in pair)
    assert np.isnan(seam_summary([c], (4, 16, 16))["hw"])


def test_real_shapes_clips_do_not_know_the_tile_grid():
    """Objects' edges are big steps wherever they lie: capped, they do not make real clips look tiled."""
    clips = [render_shapes_video(i, frames=8, height=128, width=128, split="heldout")[0] for i in range(48)]
    for tile in ((4, 16, 16), (4, 32, 32)):       # 1.03 and 1.05 here; a seamed 32x128^2 model: 1.5-1.7
        s = seam_summary(clips, tile)
        assert 0.9 < s["hw"] < 1.12 and 0.95 < s["t"] < 1.05, (tile, s)


def test_the_hw_reference_steps_pool_rows_and_columns():
    """A clip that steps by 4 grey levels along its columns only: the "hw" off-border mean step is 2 (4 and 0)."""
    x = (np.arange(32)[None, None, :] * 4 % 256).astype(np.uint8)
    clip = np.repeat(np.broadcast_to(x, (4, 32, 32))[..., None], 3, -1)
    assert abs(seam_steps(clip, (2, 8, 8))["hw"][1] - 2.0) < 1e-9


def test_rows_are_cut_at_the_tile_height_and_columns_at_its_width():
    """Tiles (t, h, w) of 8 rows and 32 columns on 32x64 frames: a clip that steps every 8 rows shows its seams
    along the rows; the columns have a border at 32 only."""
    from hpdm_cli.eval.seams import CAP
    g = ((np.arange(32) // 8) * 40)[None, :, None] + np.zeros((4, 32, 64))
    clip = np.repeat(g.astype(np.uint8)[..., None], 3, -1)
    s = seam_steps(clip, (4, 8, 32))
    assert s["hw"][0] == CAP / 2 and s["hw"][1] == 0.0     # rows: every border a capped step; columns: flat


def test_ratios_pool_the_steps_over_clips_before_dividing():
    """The ratio is the pooled border step over the pooled other step, not a mean of per-clip ratios."""
    from hpdm_cli.eval.seams import seam_ratio
    steps = [{"t": (2.0, 1.0), "hw": (2.0, 1.0)}, {"t": (4.0, 4.0), "hw": (float("nan"), float("nan"))}]
    assert seam_ratio(steps) == {"t": 3.0 / 2.5, "hw": 2.0}
