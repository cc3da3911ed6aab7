"""Tests of the procedural `shapes` dataset: captions must be true to the pixels; rendering is deterministic."""

from __future__ import annotations

import re

import numpy as np
import pytest

from hpdm_cli.data.shapes import (BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SHAPES_CLASSES, render_shapes_video,
                                  write_shapes_dataset)
from hpdm_cli.data.shards import DataError, VideoDataset

CAPTION_RE = re.compile(r"^an? (\w+) (\w+) moving (\w+) on a (\w+) background$")


def parse(caption: str) -> dict:
    """Split a shapes caption into its colour, shape, direction and background."""
    m = CAPTION_RE.match(caption)
    assert m, caption
    colour, shape, direction, background = m.groups()
    assert colour in COLOURS and shape in SHAPES and direction in DIRECTIONS and background in BACKGROUNDS
    return dict(colour=colour, shape=shape, direction=direction, background=background)


def colour_mask(video: np.ndarray, rgb, thresh: float) -> np.ndarray:
    """Pixels within `thresh` (RGB distance) of `rgb`."""
    d = np.linalg.norm(video.astype(np.float32) - np.asarray(rgb, np.float32), axis=-1)
    return d < thresh


def centroids(mask: np.ndarray) -> np.ndarray:
    """Per-frame (x, y) centroid of a boolean mask [T,H,W]."""
    out = []
    for m in mask:
        ys, xs = np.nonzero(m)
        out.append((xs.mean(), ys.mean()))
    return np.array(out)


def check_caption_against_pixels(video: np.ndarray, caption: str) -> None:
    """Assert from the pixels alone that a caption describes its video."""
    c = parse(caption)
    t, h, w, _ = video.shape
    # 1. the named shape colour is present in every frame
    core = colour_mask(video, COLOURS[c["colour"]], 30.0)
    assert core.sum(axis=(1, 2)).min() >= 4, caption
    # 2. the object's centroid (pixels near the named colour) moves in the named direction
    obj = colour_mask(video, COLOURS[c["colour"]], 80.0)
    cen = centroids(obj)
    dx, dy = cen[-1] - cen[0]
    along, across = {"right": (dx, dy), "left": (-dx, dy), "down": (dy, dx), "up": (-dy, dx)}[c["direction"]]
    assert along > 0.1 * min(h, w), (caption, dx, dy)
    assert abs(across) < 1.0, (caption, dx, dy)  # sub-pixel quantisation of the mask only
    steps = np.diff(cen, axis=0)
    sign_ok = {"right": steps[:, 0] > -0.3, "left": steps[:, 0] < 0.3, "down": steps[:, 1] > -0.3,
               "up": steps[:, 1] < 0.3}[c["direction"]]
    assert sign_ok.all(), caption  # monotonic motion
    # 3. the background (far from the object) is closest to the named background colour
    far = ~colour_mask(video, COLOURS[c["colour"]], 140.0)
    yy, xx = np.mgrid[:h, :w]
    for k in range(t):
        far[k] &= np.hypot(xx - cen[k, 0], yy - cen[k, 1]) > 0.3 * min(h, w)
    mean = video[far].astype(np.float64).mean(0)
    names = list(BACKGROUNDS)
    dists = [np.linalg.norm(mean - np.asarray(BACKGROUNDS[n], float)) for n in names]
    assert names[int(np.argmin(dists))] == c["background"], (caption, mean)


@pytest.mark.parametrize("size", [(8, 32, 32), (6, 36, 64), (5, 48, 24)])
def test_captions_true_to_pixels(size):
    """Every caption is true to its pixels at several frame sizes."""
    t, h, w = size
    for index in range(24):
        video, caption, label, attrs = render_shapes_video(index, frames=t, height=h, width=w, seed=7)
        assert video.shape == (t, h, w, 3) and video.dtype == np.uint8
        check_caption_against_pixels(video, caption)
        c = parse(caption)
        assert SHAPES_CLASSES[label] == f"{c['shape']} moving {c['direction']}"
        assert (attrs["shape"], attrs["colour"], attrs["direction"], attrs["background"]) == (
            c["shape"], c["colour"], c["direction"], c["background"])
        assert len(attrs["centres"]) == t


def test_shape_is_recognisable_from_pixels():
    """Fill ratio of the bounding box and vertical balance identify the named shape."""
    for index in range(32):
        video, caption, _, _ = render_shapes_video(index, frames=2, height=64, width=64, seed=1)
        c = parse(caption)
        m = colour_mask(video[:1], COLOURS[c["colour"]], 80.0)[0]
        ys, xs = np.nonzero(m)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        fill = m.sum() / box
        # centroid below the box centre (in image rows) <=> wide bottom <=> upward-pointing triangle
        drop = (ys.mean() - (ys.max() + ys.min()) / 2) / (ys.max() - ys.min() + 1)
        if c["shape"] == "square":
            assert fill > 0.9, (caption, fill)
        elif c["shape"] == "circle":
            assert 0.7 < fill < 0.86, (caption, fill)
        elif c["shape"] == "triangle":
            assert 0.4 < fill < 0.62 and drop > 0.08, (caption, fill, drop)
        else:  # diamond
            assert 0.4 < fill < 0.62 and abs(drop) < 0.04, (caption, fill, drop)


def test_deterministic_and_varied():
    """Same (seed, index) gives the same video; captions and labels vary."""
    a = render_shapes_video(5, frames=4, height=24, width=32, seed=3)
    b = render_shapes_video(5, frames=4, height=24, width=32, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:3] == b[1:3]
    c = render_shapes_video(5, frames=4, height=24, width=32, seed=4)
    assert not np.array_equal(a[0], c[0])
    caps = [render_shapes_video(i, frames=2, height=16, width=16, seed=0)[1] for i in range(32)]
    assert len(set(caps)) >= 16
    labels = [render_shapes_video(i, frames=2, height=16, width=16, seed=9)[2] for i in range(16)]
    assert sorted(labels) == list(range(len(SHAPES_CLASSES)))  # 16 consecutive videos cover every class
    # an image (one frame) renders too
    still, *_ = render_shapes_video(0, frames=1, height=16, width=16)
    assert still.shape == (1, 16, 16, 3)
    with pytest.raises(DataError):
        render_shapes_video(-1, frames=2, height=16, width=16)


def test_write_shapes_dataset(tmp_path):
    """The shapes dataset round-trips through the shard format, in-process and in workers."""
    seen = []
    out = write_shapes_dataset(tmp_path / "shapes", num_videos=6, frames=8, height=32, width=32, seed=2,
                               fps=10, max_videos_per_shard=4, progress=lambda d, n: seen.append((d, n)))
    assert seen[-1] == (6, 6) and len(seen) == 6
    ds = VideoDataset(out)
    assert len(ds) == 6 and ds.num_shards == 2
    assert ds.class_names == SHAPES_CLASSES and ds.fps == 10 and ds.resolution == (32, 32)
    assert ds.meta["generator"] == "shapes" and ds.meta["seed"] == 2
    caps = ds.captions()
    for i in range(6):
        video, caption, label, _ = render_shapes_video(i, frames=8, height=32, width=32, seed=2)
        it = ds.item(i)
        assert (it["caption"], it["label"]) == (caption, label)
        assert caps[it["caption_id"]] == caption
        decoded = ds.read_video(i)
        assert decoded.shape == video.shape
        assert np.abs(decoded.astype(np.int16) - video).mean() < 5.0  # sharp edges, 4:2:0 chroma
        check_caption_against_pixels(decoded, caption)  # still true after compression
    # parallel rendering writes the same dataset
    out2 = write_shapes_dataset(tmp_path / "shapes2", num_videos=6, frames=8, height=32, width=32, seed=2,
                                fps=10, max_videos_per_shard=4, workers=2)
    for name in ("shard-00000.jsonl", "shard-00001.jsonl", "captions.json"):
        assert (tmp_path / "shapes" / name).read_bytes() == (tmp_path / "shapes2" / name).read_bytes()
    assert VideoDataset(out2).read_clip(3, 2, 4).shape == (4, 32, 32, 3)
