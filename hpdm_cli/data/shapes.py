"""The procedural `shapes` text-to-video dataset: one coloured shape moving over a textured background.

Every video is a deterministic function of (seed, index) and can be rendered at any size
(frames, height, width). A video shows one shape (square, circle, triangle, diamond) of
one colour (red, green, blue, yellow, white, magenta, cyan, orange) moving in a straight
line at constant speed (left, right, up or down) over a static background: a named base
colour (black, gray, blue, green, brown, purple) with a faint, zero-mean, smooth
procedural texture (oriented stripes plus low-frequency waves, +-18 levels), defined in
resolution-independent coordinates so every pyramid level sees the same picture.

* Caption: "a {colour} {shape} moving {direction} on a {background} background" ("an" before
  "orange").
* Class label: shape x direction, `label = 4 * shape_index + direction_index`, named in
  `SHAPES_CLASSES` ("square moving left", ...; 16 classes). Labels cycle through the
  classes with the index (offset by the seed), so any 16 consecutive videos cover every
  class once; colours and backgrounds are drawn at random (shape and background colours
  are always at least 150 apart in RGB, so the object stands out).
* Geometry: the shape's size is 16-24% of min(H, W) (radius / half-extent); it stays
  entirely inside the frame and travels 35-65% of the free range along its direction, so
  the motion is visible in any clip of the video. Edges are anti-aliased (coverage from a
  signed distance field with a one-pixel ramp), so downsampled levels look right.
* Positions are in pixel-index coordinates: pixel (row y, column x) has its centre at (x, y).
* Held-out split: 16 of the 128 (colour, shape, direction) triples, those with
  `(colour_index + 2 * shape_index + 3 * direction_index) % 8 == 0` (`HELDOUT_TRIPLES`), are
  kept out of `split="train"` so that prompt faithfulness can be measured on combinations never
  seen together in training. Each shape x direction class is held out with exactly one colour,
  each colour with two classes, and every colour-shape, colour-direction and shape-direction
  pair still occurs in training. `split="train"` re-draws the colour of a video whose triple
  is held out (uniformly among the 7 others; every other video is the `"all"` video);
  `split="heldout"` gives each video its class's held-out colour; `split="all"` (default)
  ignores the rule.
"""

from __future__ import annotations

import os
import re
from contextlib import nullcontext
from typing import Callable

import numpy as np

from hpdm_cli.data.prepare.options import DATASET_PRESET
from hpdm_cli.data.shards import DataError, ShardWriter
from hpdm_cli.workers import spawned_pool

__all__ = [
    "SHAPES", "COLOURS", "BACKGROUNDS", "DIRECTIONS", "SHAPES_CLASSES",
    "SPLITS", "HELDOUT_TRIPLES", "HELDOUT_RULE", "is_heldout",
    "SHAPE_AREAS", "shape_coverage", "render_shapes_video", "shapes_attributes", "shapes_caption", "unseen_pairing",
    "write_shapes_dataset",
]

SHAPES = ["square", "circle", "triangle", "diamond"]
DIRECTIONS = ["left", "right", "up", "down"]
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (245, 220, 40),
    "white": (245, 245, 245), "magenta": (220, 50, 220), "cyan": (40, 220, 230), "orange": (250, 140, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 24), "gray": (118, 118, 118), "blue": (28, 40, 110), "green": (30, 90, 45),
    "brown": (105, 68, 40), "purple": (78, 40, 108),
}
SHAPES_CLASSES = [f"{s} moving {d}" for s in SHAPES for d in DIRECTIONS]
SPLITS = ("all", "train", "heldout")
# What `hpdm prepare --synthetic shapes` makes without a recipe, and `write_shapes_dataset`'s frame rate: 16 frames
# of 64 x 64 at 8 fps (recipes/shapes.toml's data).
SHAPES_CLIP = (16, 64, 64)
SHAPES_FPS = 8.0
HELDOUT_RULE = "(colour_index + 2 * shape_index + 3 * direction_index) % 8 == 0"
_MIN_CONTRAST = 150.0
_TEXTURE_AMPLITUDE = 18.0
_UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


def is_heldout(colour: str, shape: str, direction: str) -> bool:
    """Whether the (colour, shape, direction) triple belongs to the held-out split (see `HELDOUT_RULE`)."""
    try:
        c, k, d = list(COLOURS).index(colour), SHAPES.index(shape), DIRECTIONS.index(direction)
    except ValueError:
        raise DataError(f"unknown shapes triple ({colour!r}, {shape!r}, {direction!r}): expected a colour of "
                        f"{list(COLOURS)}, a shape of {SHAPES} and a direction of {DIRECTIONS}") from None
    return (c + 2 * k + 3 * d) % 8 == 0


HELDOUT_TRIPLES: tuple[tuple[str, str, str], ...] = tuple(
    (c, k, d) for k in SHAPES for d in DIRECTIONS for c in COLOURS if is_heldout(c, k, d))


def _check_split(split: str) -> str:
    """Return `split` if it names a split of the shapes dataset, else raise a DataError naming the choices."""
    if split not in SPLITS:
        raise DataError(f"shapes split {split!r}: expected one of {', '.join(SPLITS)}")
    return split


def _allowed_backgrounds(colour: str) -> list[str]:
    c = np.array(COLOURS[colour], float)
    return [b for b, v in BACKGROUNDS.items() if np.linalg.norm(c - np.array(v, float)) >= _MIN_CONTRAST]


def _seed_offset(seed: int) -> int:
    return int(np.random.default_rng([int(seed), 0xC1A55]).integers(len(SHAPES_CLASSES)))


def shapes_attributes(index: int, *, frames: int, height: int, width: int, seed: int = 0,
                      split: str = "all") -> dict:
    """Ground truth of video `index` without pixels: shape, colour, direction, background, size, centres."""
    _check_split(split)
    if int(index) < 0 or int(seed) < 0:
        raise DataError(f"shapes: index {index} and seed {seed} must be >= 0")
    if frames < 1 or height < 4 or width < 4:
        raise DataError(f"shapes: size {frames}x{height}x{width} too small: need frames >= 1, height and width >= 4")
    label = (int(index) + _seed_offset(seed)) % len(SHAPES_CLASSES)
    shape, direction = SHAPES[label // len(DIRECTIONS)], DIRECTIONS[label % len(DIRECTIONS)]
    rng = np.random.default_rng([int(seed), int(index)])
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    if split == "heldout":
        colour = next(c for c in COLOURS if is_heldout(c, shape, direction))
    elif split == "train" and is_heldout(colour, shape, direction):
        others = [c for c in COLOURS if not is_heldout(c, shape, direction)]
        colour = others[int(np.random.default_rng([int(seed), int(index), 0x7EA1]).integers(len(others)))]
    options = _allowed_backgrounds(colour)
    background = options[int(rng.integers(len(options)))]
    m = min(height, width)
    size = float(rng.uniform(0.16, 0.24)) * m                      # radius / half-extent in pixels
    ux, uy = _UNIT[direction]
    along, across = (width, height) if ux else (height, width)
    lo_a, hi_a = size - 0.5, along - 0.5 - size                    # centre range keeping the shape in frame
    lo_c, hi_c = size - 0.5, across - 0.5 - size
    travel = float(rng.uniform(0.35, 0.65)) * (hi_a - lo_a) if frames > 1 else 0.0
    a0 = float(rng.uniform(lo_a, hi_a - travel))
    c = float(rng.uniform(lo_c, hi_c))
    t = np.arange(frames) / max(frames - 1, 1)
    a = a0 + travel * t
    if ux + uy < 0:                                                # left / up: run the path backwards
        a = (lo_a + hi_a) - a
    cx, cy = (a, np.full(frames, c)) if ux else (np.full(frames, c), a)
    tex = dict(
        angle=float(rng.uniform(0, np.pi)), freq=float(rng.uniform(2.0, 5.0)), phase=float(rng.uniform(0, 2 * np.pi)),
        waves=[(float(rng.uniform(0.5, 2.5)), float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi)))
               for _ in range(3)],
        tint=[float(v) for v in rng.uniform(-0.3, 0.3, 3)],
    )
    return dict(index=int(index), seed=int(seed), split=split, label=label, shape=shape, colour=colour,
                colour_rgb=COLOURS[colour], direction=direction, background=background,
                background_rgb=BACKGROUNDS[background], size=size,
                centres=[(float(x), float(y)) for x, y in zip(cx, cy)], texture=tex)


def _texture(height: int, width: int, tex: dict) -> np.ndarray:
    """Zero-mean smooth texture in [-1, 1]-ish, shape [H, W, 3], in resolution-independent coordinates."""
    m = float(min(height, width))
    v = ((np.arange(height) + 0.5) / m)[:, None]
    u = ((np.arange(width) + 0.5) / m)[None, :]
    ca, sa = np.cos(tex["angle"]), np.sin(tex["angle"])
    stripes = np.sin(2 * np.pi * tex["freq"] * (ca * u + sa * v) + tex["phase"])
    waves = sum(np.sin(2 * np.pi * f * (np.cos(o) * u + np.sin(o) * v) + p) for f, o, p in tex["waves"]) / 3.0
    lum = 0.5 * stripes + 0.5 * waves
    tint = 1.0 + np.asarray(tex["tint"])[None, None, :]
    return lum[..., None] * tint


def _sdf(shape: str, dx: np.ndarray, dy: np.ndarray, size: float) -> np.ndarray:
    """Signed distance (pixels; negative inside) of a shape centred at the origin; dy points down."""
    if shape == "circle":
        return np.hypot(dx, dy) - size
    if shape in ("square", "diamond"):
        if shape == "diamond":
            dx, dy = (dx + dy) * np.sqrt(0.5), (dx - dy) * np.sqrt(0.5)
            b = 0.85 * size
        else:
            b = 0.9 * size
        qx, qy = np.abs(dx) - b, np.abs(dy) - b
        return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
    if shape == "triangle":  # equilateral, pointing up, centred on its centroid
        r = 1.2 * size  # half the side length
        k = np.sqrt(3.0)
        px, py = np.abs(dx) - r, -dy + r / k
        flip = px + k * py > 0
        px, py = np.where(flip, (px - k * py) / 2, px), np.where(flip, (-k * px - py) / 2, py)
        px = px - np.clip(px, -2 * r, 0)
        return -np.hypot(px, py) * np.sign(py)
    raise DataError(f"unknown shape {shape!r}: expected one of {SHAPES}")


# Area of each shape in units of size**2 (size = radius / half-extent as in `_sdf`).
SHAPE_AREAS = {"square": (2 * 0.9) ** 2, "circle": float(np.pi), "triangle": float(np.sqrt(3.0)) * 1.2 ** 2,
               "diamond": (2 * 0.85) ** 2}


def shape_coverage(shape: str, cx: float, cy: float, size: float, height: int, width: int, *,
                   y0: int = 0, x0: int = 0) -> np.ndarray:
    """The renderer's anti-aliased coverage in [0, 1], float32 [height, width], of pixel rows y0.. and columns x0..."""
    ys = np.arange(y0, y0 + height, dtype=np.float32)[:, None]
    xs = np.arange(x0, x0 + width, dtype=np.float32)[None, :]
    return np.clip(0.5 - _sdf(shape, xs - cx, ys - cy, size), 0.0, 1.0)


def render_shapes_video(index: int, *, frames: int, height: int, width: int,
                        seed: int = 0, split: str = "all") -> tuple[np.ndarray, str, int, dict]:
    """Render video `index` of `split`: (uint8 [T,H,W,3], caption, label, attrs with the ground truth)."""
    attrs = shapes_attributes(index, frames=frames, height=height, width=width, seed=seed, split=split)
    bg = np.asarray(attrs["background_rgb"], np.float32)[None, None] + _TEXTURE_AMPLITUDE * _texture(
        height, width, attrs["texture"]).astype(np.float32)
    col = np.asarray(attrs["colour_rgb"], np.float32)
    out = np.empty((frames, height, width, 3), np.uint8)
    for t, (cx, cy) in enumerate(attrs["centres"]):
        alpha = shape_coverage(attrs["shape"], cx, cy, attrs["size"], height, width)[..., None]
        out[t] = np.clip(np.rint(bg + alpha * (col - bg)), 0, 255).astype(np.uint8)
    caption = shapes_caption(attrs["colour"], attrs["shape"], attrs["direction"], attrs["background"])
    return out, caption, attrs["label"], attrs


def _render_encoded(job: tuple) -> tuple[bytes, str, int]:
    """Worker: render and encode one video (top-level so that process pools can pickle it)."""
    from hpdm_cli.io.video import encode_mp4_bytes  # noqa: PLC0415
    index, frames, height, width, seed, fps, crf, gop, preset, split = job
    video, caption, label, _ = render_shapes_video(index, frames=frames, height=height, width=width, seed=seed,
                                                   split=split)
    return encode_mp4_bytes(video, fps, crf=crf, gop=gop, preset=preset), caption, label


def check_num_videos(num_videos: int) -> None:
    """Refuse a dataset of no videos (DataError naming --num-videos), before any folder is made."""
    if num_videos < 1:
        raise DataError(f"--num-videos {num_videos}: expected at least 1 video")


def write_shapes_dataset(out_dir: str | os.PathLike, *, num_videos: int, frames: int, height: int, width: int,
                         seed: int = 0, fps: float = SHAPES_FPS, progress: Callable[[int, int], None] | None = None,
                         workers: int = 0, max_videos_per_shard: int = 1000, crf: int = 18, gop: int = 16,
                         preset: str = DATASET_PRESET, overwrite: bool = False, split: str = "all") -> str:
    """Render `num_videos` shapes videos into a shard dataset at `out_dir`; returns the path.

    `progress(done, total)` is called after every video; `workers > 0` renders and encodes
    in that many processes (the output is identical to the in-process one). `split` picks
    the prompts (all, train: no held-out triple, heldout: only held-out triples) and is
    recorded in the dataset's metadata with the held-out rule.
    """
    check_num_videos(num_videos)
    shapes_attributes(0, frames=frames, height=height, width=width, seed=seed, split=split)  # validate early
    meta = dict(generator="shapes", seed=int(seed), frames=int(frames), height=int(height), width=int(width),
                shapes=SHAPES, colours=list(COLOURS), backgrounds=list(BACKGROUNDS), directions=DIRECTIONS,
                label="4 * shape_index + direction_index", split=split, heldout=HELDOUT_RULE)
    jobs = ((i, frames, height, width, seed, fps, crf, gop, preset, split) for i in range(num_videos))
    tag = f"{seed}" if split == "all" else f"{seed}:{split}"
    with ShardWriter(out_dir, fps=fps, class_names=SHAPES_CLASSES, meta=meta, crf=crf, gop=gop, preset=preset,
                     max_videos_per_shard=max_videos_per_shard, overwrite=overwrite) as writer:
        with spawned_pool(workers) if workers > 0 else nullcontext() as pool:
            results = map(_render_encoded, jobs) if pool is None else pool.map(_render_encoded, jobs, chunksize=4)
            for i, (blob, caption, label) in enumerate(results):
                writer.add_encoded(blob, num_frames=frames, height=height, width=width, fps=fps, label=label,
                                   caption=caption, source=f"shapes:{tag}:{i}")
                if progress is not None:
                    progress(i + 1, num_videos)
    return os.fspath(out_dir)


def shapes_caption(colour: str, shape: str, direction: str, background: str | None = None) -> str:
    """The caption of a shapes video: "a red circle moving right on a gray background" (no background: shorter)."""
    article = "an" if colour[0] in "aeiou" else "a"
    where = f" on a {background} background" if background else ""
    return f"{article} {colour} {shape} moving {direction}{where}"


def unseen_pairing(prompt: str) -> str | None:
    """Why a shapes model cannot draw `prompt` (a colour on a background the data never pairs it with), else None."""
    words = re.findall(r"[a-z]+", prompt.lower())
    colour = next((w for w in words if w in COLOURS), None)
    background = next((a for a, b in zip(words, words[1:]) if b == "background" and a in BACKGROUNDS), None)
    if colour is None or background is None or colour == background and words.count(colour) < 2:
        return None
    allowed = _allowed_backgrounds(colour)
    if background in allowed:
        return None
    return (f"the shapes data never shows a {colour} object on a {background} background (too little contrast), "
            f"so the model will likely draw no object; {colour} objects appear on {', '.join(allowed)}")


def names_background(prompt: str) -> bool:
    """Whether `prompt` names one of the shapes data's backgrounds as its captions do ("... on a gray background")."""
    words = " ".join(re.findall(r"[a-z]+", prompt.lower()))
    return re.search(rf"\b({'|'.join(BACKGROUNDS)})\s+background\b", words) is not None


def unknown_words(prompt: str, *, short_captions: bool = False) -> str | None:
    """What in `prompt` a shapes model never read in a caption (words, or no colour/shape/direction at all), else None.

    A prompt without a background is outside the captions too, unless the model was trained on `short_captions`
    as well (`data.short_caption_prob`)."""
    words = re.findall(r"[a-z]+", prompt.lower())
    known = {w for c in shapes_prompts(short=False) for w in c.split()}
    new = list(dict.fromkeys(w for w in words if w not in known))
    missing = [what for what, names in (("colour", COLOURS), ("shape", SHAPES), ("direction", DIRECTIONS))
               if not any(w in names for w in words)]
    # Every full caption names its background ("on a gray background"); a model trained on those alone drew objects
    # at 0.23x the real area without one, lost 4 of 12, and let tiles pick different backgrounds; one trained on
    # short captions too draws them at 0.95x and loses none (docs/results.md, sections 59-60).
    background = short_captions or names_background(prompt)
    if not new and not missing and background:
        return None
    said = []
    if new:
        listed = ", ".join(repr(w) for w in new[:6]) + (" ..." if len(new) > 6 else "")
        said.append(f"{listed} {'is' if len(new) == 1 else 'are'} not among them")
    if missing:
        said.append(f"with no {' or '.join(missing)} it knows named, it picks {'that' if len(missing) == 1 else 'those'}"
                    " itself")
    if not background:
        said.append("with no background named (\"on a gray background\") it draws the object smaller or not at all, "
                    "and its tiles may pick different backgrounds (docs/results.md, section 59)")
    example = shapes_caption("red", "circle", "right", "gray")
    return (f"the model knows only the shapes data's words ({example!r}; colours {', '.join(COLOURS)}; shapes "
            f"{', '.join(SHAPES)}; moving {', '.join(DIRECTIONS)}; backgrounds {', '.join(BACKGROUNDS)}): "
            f"{'; '.join(said)}")


def shapes_prompts(*, short: bool = True) -> list[str]:
    """Every caption the shapes generator can produce (and, with `short`, each without its background).

    Full captions: colour x shape x direction x background, only the backgrounds a colour can
    appear on (the contrast rule of `shapes_attributes`); short ones: "a red circle moving right".
    A prompt table of these lets any shapes prompt be looked up without the text encoder.
    """
    full = [shapes_caption(c, s, d, b)
            for c in COLOURS for s in SHAPES for d in DIRECTIONS for b in _allowed_backgrounds(c)]
    return full + ([shapes_caption(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS] if short else [])
