"""Tests of the pixel-level faithfulness reader of `shapes` clips: right on real clips, chance on wrong prompts."""

from __future__ import annotations

import numpy as np
import pytest

from hpdm_cli.data.shapes import COLOURS, DIRECTIONS, SHAPE_AREAS, SHAPES, render_shapes_video
from hpdm_cli.data.shards import DataError
from hpdm_cli.eval.faithfulness import (ClipReading, accuracy_by_asked, derangement, parse_shapes_caption, read_clip,
                                        score_clips, swapped_floor)
from hpdm_cli.io.video import VideoError


def rendered(n: int, size: tuple[int, int, int], seed: int) -> tuple[list[np.ndarray], list[str], list[dict]]:
    """`n` rendered shapes clips of `size` with their captions and ground truth."""
    clips, captions, attrs = [], [], []
    for i in range(n):
        video, caption, _, a = render_shapes_video(i, frames=size[0], height=size[1], width=size[2], seed=seed)
        clips.append(video)
        captions.append(caption)
        attrs.append(a)
    return clips, captions, attrs


def h264(clips: list[np.ndarray]) -> list[np.ndarray]:
    """The clips after an H.264 mp4 encode/decode round trip (as generated videos are saved)."""
    from hpdm_cli.io.video import encode_mp4_bytes, read_video_bytes
    return [read_video_bytes(encode_mp4_bytes(c, 8.0)) for c in clips]


def assert_faithful(score: dict, n: int) -> None:
    """Every attribute read right on >= 99% of `n` clips, every clip valid."""
    assert score["n"] == n and score["valid"] == 1.0, score
    for k in ("colour", "shape", "direction", "background", "all"):
        assert score[k] >= 0.99, (k, score[k], score["confusion"].get(k))


@pytest.fixture(scope="module")
def real64():
    """64 rendered clips at the main size, 16x64x64, read once."""
    clips, captions, attrs = rendered(64, (16, 64, 64), seed=21)
    return [read_clip(c) for c in clips], captions, attrs


def test_real_clips_at_64(real64):
    """Rendered 16x64x64 clips: every attribute right, shapes fit their template closely, real motion."""
    readings, captions, attrs = real64
    score = score_clips(readings, captions)
    assert_faithful(score, 64)
    assert score == score_clips(readings, attrs)  # captions and attribute dicts are the same target
    assert min(r.shape_iou for r in readings) > 0.95
    assert score["travel"] > 0.16 and score["area_cv"] < 0.01
    assert max(r.clutter for r in readings) < 0.05 and max(r.colour_distance for r in readings) < 10


def test_object_area_is_the_rendered_one(real64):
    """Each clip's object area is the rendered shape's (template area x size^2), so a too-large object reads larger."""
    readings, captions, attrs = real64
    truth = np.array([SHAPE_AREAS[a["shape"]] * a["size"] ** 2 / (64 * 64) for a in attrs])
    got = np.array([r.area for r in readings])
    assert np.abs(got / truth - 1).max() < 0.03, np.abs(got / truth - 1).max()   # 1% measured
    assert np.corrcoef(got, truth)[0, 1] > 0.98                     # sizes vary 1.5x: the reading follows them
    assert score_clips(readings, captions)["area"] == pytest.approx(float(np.median(got)))


@pytest.mark.parametrize("size", [(8, 32, 32), (4, 16, 16)])
def test_real_clips_small(size):
    """Rendered clips at the lower pyramid levels' sizes (8x32x32, 4x16x16) are read right too."""
    clips, captions, _ = rendered(64, size, seed=22)
    assert_faithful(score_clips(clips, captions), 64)


@pytest.mark.parametrize("size,n", [((16, 64, 64), 24), ((8, 32, 32), 64)])
def test_after_h264_round_trip(size, n):
    """Clips that went through mp4 (4:2:0 chroma, crf 18) are still read right."""
    pytest.importorskip("av")
    clips, captions, _ = rendered(n, size, seed=23)
    assert_faithful(score_clips(h264(clips), captions), n)


def swapped(attrs: dict, key: str, names: list[str]) -> dict:
    """The attributes with `key` changed to the next different value."""
    return {**attrs, key: names[(names.index(attrs[key]) + 1) % len(names)]}


def test_swapped_captions_score_near_chance(real64):
    """Against wrong prompts the score falls: to 0 for a changed attribute, to chance for other clips' prompts."""
    readings, captions, attrs = real64
    for key, names in (("colour", list(COLOURS)), ("shape", SHAPES), ("direction", DIRECTIONS)):
        score = score_clips(readings, [swapped(a, key, names) for a in attrs])
        assert score[key] == 0.0 and score["all"] == 0.0, (key, score[key])
        assert all(score[k] >= 0.99 for k in ("colour", "shape", "direction") if k != key)
    # Other clips' captions (a derangement): a prompt-blind model's score. Matching by chance has
    # probability 1/8 (colour) and 1/4 (shape, direction; here exactly 16 clips of each value);
    # the bounds are chance + 3 binomial standard deviations at n = 64 (0.041 and 0.054).
    floor = swapped_floor(readings, captions, seed=0)
    assert floor["colour"] <= 0.125 + 3 * 0.041
    assert floor["shape"] <= 0.25 + 3 * 0.054 and floor["direction"] <= 0.25 + 3 * 0.054
    assert floor["all"] <= 0.05
    assert floor["chance"] == dict(colour=1 / 8, shape=1 / 4, direction=1 / 4, all=1 / 128)
    perm = derangement(64, seed=0)
    assert sorted(perm) == list(range(64)) and all(p != i for i, p in enumerate(perm))


def test_accuracy_by_asked_direction_shows_an_axis_not_learnt(real64):
    """Clips whose horizontal movers stand still: up and down all right, left and right none, per asked value."""
    _, captions, attrs = real64
    clips, _, _ = rendered(64, (16, 64, 64), seed=21)
    still = [np.repeat(c[:1], len(c), axis=0) if a["direction"] in ("left", "right") else c
             for c, a in zip(clips, attrs)]
    score = score_clips(still, captions)
    by = accuracy_by_asked(score, "direction")
    counts = {d: sum(a["direction"] == d for a in attrs) for d in DIRECTIONS}
    assert by == {d: [0 if d in ("left", "right") else counts[d], counts[d]] for d in sorted(DIRECTIONS)}
    assert sum(n for _, n in by.values()) == 64 and min(counts.values()) > 0
    assert accuracy_by_asked(score, "colour") == {c: [n, n] for c, (_, n) in accuracy_by_asked(score, "colour").items()}


def test_reads_what_is_wrong():
    """A still or there-and-back object has no direction, reversed time moves the other way, noise has no shape."""
    video, caption, _, attrs = render_shapes_video(3, frames=16, height=64, width=64, seed=0)
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    assert read_clip(video[::-1]).direction == opposite[attrs["direction"]]
    still = read_clip(np.repeat(video[:1], 16, axis=0))
    assert still.direction == "none" and still.shape == attrs["shape"] and still.colour == attrs["colour"]
    there_and_back = [*range(0, 16, 2), *range(15, 0, -2)]
    assert read_clip(video[there_and_back]).direction == "none"
    noise = read_clip(np.random.default_rng(1).integers(0, 256, video.shape, dtype=np.uint8))
    assert noise.colour == "none" and noise.shape in (None, "none") and noise.direction in (None, "none")
    blank = read_clip(np.full_like(video, 118))
    assert not blank.valid and "no object" in blank.reason and blank.background == "gray"
    assert score_clips([blank], [caption])["all"] == 0.0
    # two frames of real motion are enough for a direction; one frame has none
    assert read_clip(video[[0, -1]]).direction == attrs["direction"]
    assert read_clip(video[:1]).direction == "none"


def test_parse_shapes_caption():
    """Captions with or without the background parse; anything else is a DataError naming the format."""
    assert parse_shapes_caption("a red circle moving right") == dict(colour="red", shape="circle",
                                                                     direction="right", background=None)
    assert parse_shapes_caption("An Orange diamond moving up on a gray background.") == dict(
        colour="orange", shape="diamond", direction="up", background="gray")
    for i in range(32):
        _, caption, _, a = render_shapes_video(i, frames=2, height=16, width=16, seed=4)
        assert parse_shapes_caption(caption) == {k: a[k] for k in ("colour", "shape", "direction", "background")}
    with pytest.raises(DataError, match="not a shapes prompt"):
        parse_shapes_caption("a cat playing the piano")
    with pytest.raises(DataError, match="unknown colour 'pink'"):
        parse_shapes_caption("a pink circle moving right")
    with pytest.raises(DataError, match="unknown direction"):
        parse_shapes_caption("a red circle moving sideways")


def test_bad_inputs():
    """Wrong arrays are VideoErrors, mismatched clip and caption counts DataErrors."""
    video, caption, _, _ = render_shapes_video(0, frames=4, height=16, width=16)
    with pytest.raises(VideoError, match="dtype"):
        read_clip(video.astype(np.float32))
    with pytest.raises(VideoError, match="shape"):
        read_clip(video[0])
    with pytest.raises(DataError, match="1 clips but 2 captions"):
        score_clips([video], [caption, caption])
    with pytest.raises(DataError, match="more clips than captions"):
        score_clips([video, video], [caption])
    with pytest.raises(DataError, match="lack"):
        score_clips([video], [{"colour": "red"}])
    assert isinstance(read_clip(video), ClipReading)


def drawn(path: list[tuple[float, float]], *, shape: str = "circle", colour: str = "red", background: str = "gray",
          size: float = 6.0, hw: int = 64) -> np.ndarray:
    """A flat-background clip with one `shape` drawn by the renderer's template at each (cx, cy) of `path`."""
    from hpdm_cli.data.shapes import BACKGROUNDS, shape_coverage
    bg, fg = np.array(BACKGROUNDS[background], np.float32), np.array(COLOURS[colour], np.float32)
    frames = []
    for cx, cy in path:
        a = shape_coverage(shape, cx, cy, size, hw, hw)[..., None]
        frames.append(np.round(bg + a * (fg - bg)).astype(np.uint8))
    return np.stack(frames)


def test_displacement_is_the_travel_over_the_clip_and_diagonal_motion_has_no_direction():
    """The displacement is the centroid's travel from the first frame to the last (t - 1 steps); a motion not
    mostly along one axis (dominant axis < 2x the other) reads as no direction."""
    straight = read_clip(drawn([(16 + 2 * k, 32) for k in range(16)]))
    assert straight.direction == "right" and straight.shape == "circle" and straight.colour == "red"
    assert straight.displacement[0] == pytest.approx(30.0, abs=0.3) and abs(straight.displacement[1]) < 0.3
    diagonal = read_clip(drawn([(16 + 2 * k, 16 + 1.5 * k) for k in range(16)]))
    assert diagonal.valid and diagonal.displacement[0] == pytest.approx(30.0, abs=0.3)
    assert diagonal.direction == "none"


def test_an_object_found_in_fewer_than_half_of_the_frames_is_not_valid():
    """An object found in 6 of 16 frames (blank frames elsewhere) is no object; in 8 of 16 it is one."""
    gray = np.array((118, 118, 118), np.uint8)
    for shown, valid in ((6, False), (8, True)):
        clip = drawn([(16 + 2 * k, 32) for k in range(16)])
        clip[shown:] = gray
        r = read_clip(clip)
        assert r.valid is valid and r.found_frames == shown, (shown, r.reason)
        if not valid:
            assert f"found in {shown} of 16 frames" in r.reason


def test_scattered_object_coloured_pixels_make_the_clip_not_valid():
    """A small second blob is ignored (the largest component is the object); object-coloured pixels scattered
    over the frame, more of them than the object's, make the clip not valid (clutter above MAX_CLUTTER)."""
    clip = drawn([(20 + 2 * k, 32) for k in range(16)])
    clip[:, 4:6, 4:6] = COLOURS["red"]                          # a 2x2 speck far from the object
    r = read_clip(clip)
    assert r.valid and r.shape == "circle" and r.colour == "red" and r.direction == "right"
    assert 0 < r.clutter < 0.1
    cluttered = drawn([(20 + 2 * k, 32) for k in range(16)])
    ys, xs = np.mgrid[2:62:4, 2:62:4]
    cluttered[:, ys.ravel(), xs.ravel()] = COLOURS["red"]       # 225 isolated red pixels a frame
    r = read_clip(cluttered)
    assert not r.valid and r.clutter > 0.5 and "no single object" in r.reason


def test_scores_skip_absent_attributes_and_invalid_readings():
    """An attribute the target does not name (no background) is not scored (NaN), and the shape IoU, travel and
    area are pooled over valid readings only."""
    good = read_clip(drawn([(16 + 2 * k, 32) for k in range(16)]))
    blank = read_clip(np.full((16, 64, 64, 3), 118, np.uint8))
    want = dict(colour="red", shape="circle", direction="right")
    score = score_clips([good, blank], [want, want])
    assert np.isnan(score["background"]) and score["colour"] == 0.5 and score["valid"] == 0.5
    assert score["shape_iou"] == pytest.approx(good.shape_iou) and score["area"] == pytest.approx(good.area)


def test_clips_smaller_than_8_pixels_are_refused():
    """A frame side below 8 pixels is a VideoError; 8x8 is read."""
    with pytest.raises(VideoError, match="at least 8x8"):
        read_clip(np.zeros((4, 7, 16, 3), np.uint8))
    assert isinstance(read_clip(np.zeros((4, 8, 8, 3), np.uint8)), ClipReading)


def test_per_pixel_background_is_the_median_of_the_frames_away_from_the_object():
    """The per-pixel background median averages the two middle values of an even count of kept frames."""
    from hpdm_cli.eval.faithfulness import _masked_median
    x = np.zeros((4, 1, 1, 3), np.float32)
    x[:, 0, 0, 0] = [10, 40, 20, 200]
    keep = np.array([True, True, True, False])[:, None, None]
    assert _masked_median(x, keep, np.zeros((1, 1, 3), np.float32))[0, 0, 0] == 20
    keep = np.array([True, True, False, False])[:, None, None]
    assert _masked_median(x, keep, np.zeros((1, 1, 3), np.float32))[0, 0, 0] == 25
    none = np.zeros((4, 1, 1), bool)
    assert _masked_median(x, none, np.full((1, 1, 3), 7, np.float32))[0, 0, 0] == 7
