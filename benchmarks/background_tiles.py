"""Do a packaged-model video's tiles agree on the background when the prompt names none?

    python benchmarks/background_tiles.py [--ckpt packaged] [--prompts 6] [--seeds 0-1]
        [--overlaps none,shift-fhw] [--out out/background-tiles] [--sheet PNG]

Every `shapes` caption names its background ("... on a gray background"). For `--prompts` (colour, shape,
direction) triples of the training split, this samples each prompt as `hpdm sample` does (the model's defaults,
on the CPU), once without a background and once with one the colour may appear on, under each tiling of
`--overlaps`, and measures every clip: the background colour of each last-level tile (frames x height x
width: the median of its pixels that are not near the prompt's object colour) and the largest distance of a tile's colour from the median
of all tiles (sum over RGB, 0-765). Real clips differ by their texture alone (up to ~50: stripes and waves of
+-18 levels a channel); two of the six backgrounds differ by 114 or more. A clip "disagrees" when a tile is more than `--threshold` (80) from the others. The
same measure of real clips is the control, and so is their object area (pixels near the object's colour):
the table gives each setting's area against the real clips' and the clips whose object is (nearly) gone.
`--sheet` writes each clip's middle frame.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def tile_backgrounds(video: np.ndarray, tile: tuple[int, int, int], object_rgb, near: int = 150) -> np.ndarray:
    """Background colour [blocks, rows, cols, 3] of each (frames x height x width) tile of a video [F, H, W, 3]
    uint8: the median of its pixels that are not the object's (within `near` of 765 of the object's colour, the
    prompt's: every background is at least 150 from the object in the data); NaN for a tile that the object
    covers by three quarters or more."""
    F, H, W, _ = video.shape
    tf, th, tw = tile
    background = np.abs(video.astype(np.int32) - np.asarray(object_rgb, np.int32)).sum(-1) >= near
    out = np.zeros((F // tf, H // th, W // tw, 3))
    for t in range(F // tf):
        for i in range(H // th):
            for j in range(W // tw):
                box = (slice(t * tf, (t + 1) * tf), slice(i * th, (i + 1) * th), slice(j * tw, (j + 1) * tw))
                px, keep = video[box], background[box]
                out[t, i, j] = np.median(px[keep], axis=0) if keep.mean() > 0.25 else np.nan
    return out


def tile_disagreement(video: np.ndarray, tile: tuple[int, int, int], object_rgb) -> float:
    """The largest distance (sum over RGB) of a tile's background colour from the median of all tiles' colours."""
    colours = tile_backgrounds(video, tile, object_rgb).reshape(-1, 3)
    colours = colours[~np.isnan(colours).any(-1)]
    return float(np.abs(colours - np.median(colours, axis=0)).sum(-1).max())


def object_area(video: np.ndarray, object_rgb, near: int = 150) -> float:
    """The mean fraction of a frame's pixels that show the object: within `near` (of 765) of its colour and at
    least `near` from the frame's median colour (an object drawn in the background's colour is not seen)."""
    v = video.astype(np.int32)
    med = np.median(video.reshape(len(video), -1, 3), axis=1).astype(np.int32)[:, None, None]
    seen = (np.abs(v - np.asarray(object_rgb, np.int32)).sum(-1) < near) & (np.abs(v - med).sum(-1) >= near)
    return float(seen.mean())


def prompts_of(n: int) -> list[tuple[str, str, str, str]]:
    """`n` (colour, shape, direction, background) of the training split, spread over colours, shapes and directions."""
    from hpdm_cli.data.shapes import COLOURS, DIRECTIONS, HELDOUT_TRIPLES, SHAPES, _allowed_backgrounds
    out, k = [], 0
    colours, shapes, dirs = list(COLOURS), SHAPES, DIRECTIONS
    while len(out) < n and k < 1000:
        c, s, d = colours[k % len(colours)], shapes[(k // 2) % len(shapes)], dirs[(k * 3 + 1) % len(dirs)]
        k += 1
        if (c, s, d) not in HELDOUT_TRIPLES and (c, s, d) not in [o[:3] for o in out]:
            allowed = _allowed_backgrounds(c)
            out.append((c, s, d, allowed[len(out) % len(allowed)]))
    return out


def main() -> int:
    """Sample the prompts with and without a background under each tiling; print how many clips' tiles disagree."""
    from hpdm_cli.checkpoint import resolve_sampling_weights
    from hpdm_cli.data.shapes import COLOURS, render_shapes_video, shapes_attributes, shapes_caption
    from hpdm_cli.drivers.options import parse_seeds
    from hpdm_cli.drivers.sample import generate
    from hpdm_cli.io.video import read_video
    from hpdm_cli.train.checkpoint import read_weights_file
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=None, help="weights (default: the packaged model)")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--seeds", default="0-1")
    ap.add_argument("--overlaps", default="none,shift-fhw")
    ap.add_argument("--threshold", type=float, default=80.0)
    ap.add_argument("--out", type=Path, default=None, help="keep the clips here (default: a temporary folder)")
    ap.add_argument("--sheet", type=Path, default=None)
    a = ap.parse_args()
    seeds = parse_seeds(a.seeds)
    out = a.out or Path(tempfile.mkdtemp(prefix="background-tiles-"))
    out.mkdir(parents=True, exist_ok=True)
    recipe = read_weights_file(resolve_sampling_weights(a.ckpt or "packaged"))[1]
    tile = tuple(recipe.pyramid.patch)                             # the last level's tiles (frames, height, width)
    rows, frames = [], []
    for overlap in [o.strip() for o in a.overlaps.split(",") if o.strip()]:
        for named in (False, True):
            scores, areas = [], []
            for c, s, d, b in prompts_of(a.prompts):
                prompt = shapes_caption(c, s, d, b if named else None)
                stem = out / f"{overlap}-{'bg' if named else 'nobg'}-{c}-{s}-{d}.mp4"
                if not any(out.glob(stem.stem + "*.mp4")):                  # clips kept in --out are scored again
                    generate(a.ckpt, stem, seeds=seeds, prompt=prompt, overlap=overlap, device="cpu")
                for p in sorted(out.glob(stem.stem + "*.mp4")):
                    video = read_video(p)[0]
                    scores.append(tile_disagreement(video, tile, COLOURS[c]))
                    areas.append(object_area(video, COLOURS[c]))
                    frames.append(video[len(video) // 2])
                print(f"{overlap:>10} {'named' if named else 'none':>6} {prompt!r}: "
                      + ", ".join(f"{v:.0f}" for v in scores[-len(seeds):]), flush=True)
            rows.append((overlap, named, scores, areas))
    F, H, W = recipe.pyramid.resolution
    real = [(render_shapes_video(i, frames=F, height=H, width=W)[0],
             COLOURS[shapes_attributes(i, frames=F, height=H, width=W)["colour"]]) for i in range(32)]
    real_area = float(np.mean([object_area(v, rgb) for v, rgb in real]))
    rows.append(("real clips (control)", True, [tile_disagreement(v, tile, rgb) for v, rgb in real],
                 [object_area(v, rgb) for v, rgb in real]))
    print(f"\n| tiling | background in the prompt | clips | tiles disagree (> {a.threshold:g}) | median | max | "
          "object area ÷ real | objects missing (< 0.2 of the real area) |")
    print("|---|---|---|---|---|---|---|---|")
    for overlap, named, scores, areas in rows:
        v, ar = np.array(scores), np.array(areas) / real_area
        print(f"| {overlap} | {'named' if named else 'none'} | {len(v)} | {int((v > a.threshold).sum())} | "
              f"{np.median(v):.0f} | {v.max():.0f} | {ar.mean():.2f} | {int((ar < 0.2).sum())} |")
    if a.sheet:
        from PIL import Image
        Image.fromarray(np.concatenate(frames, 1)).save(a.sheet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
