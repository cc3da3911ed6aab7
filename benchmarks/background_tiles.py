"""Do a model's tiles agree on the background when the prompt names none?

    python benchmarks/background_tiles.py [--ckpt packaged[,WEIGHTS...]] [--prompts 6] [--seeds 0-1]
        [--overlaps none,shift-fhw] [--device auto] [--bf16] [--batch 2] [--prompt-table TABLE] [--sheet PNG]

Every `shapes` caption names its background ("... on a gray background"). For `--prompts` (colour, shape,
direction) triples of the training split, this samples each prompt as `hpdm sample` does (each model's stored
sampling defaults, in memory: on a GPU host without the text encoder give `--prompt-table`, a table that holds
the short captions, as `hpdm prepare --synthetic shapes` writes), once without a background and once with one
the colour may appear on, under each tiling of `--overlaps`, and measures every clip: the background colour of
each last-level tile (frames x height x width: the median of its pixels that are not near the prompt's object
colour) and the largest distance of a tile's colour from the median of all tiles (sum over RGB, 0-765). Real
clips differ by their texture alone (up to ~50: stripes and waves of +-18 levels a channel); two of the six
backgrounds differ by 114 or more. A clip "disagrees" when a tile is more than `--threshold` (80) from the
others. Blue and purple differ by 52 only, inside that spread, so a second measure names each tile's nearest of the
six backgrounds: a clip has "tiles of two backgrounds" when they are not all the same (never in real clips; a
per-clip line marks such a clip with `*`). The same measure of real clips is the control, and so is their object area (pixels near the object's
colour): the table gives each model's and setting's area against the real clips' and the clips whose object is
(nearly) gone. Several `--ckpt` (comma-separated) are measured on the same prompts and seeds, one table.
`--sheet` writes each clip's middle frame, a row per model, tiling and prompt kind.
"""

from __future__ import annotations

import argparse
import sys
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


def tile_colours(video: np.ndarray, tile: tuple[int, int, int], object_rgb) -> np.ndarray:
    """The background colours [n, 3] of the tiles that show enough background to have one (tile_backgrounds)."""
    colours = tile_backgrounds(video, tile, object_rgb).reshape(-1, 3)
    return colours[~np.isnan(colours).any(-1)]


def tile_disagreement(video: np.ndarray, tile: tuple[int, int, int], object_rgb) -> float:
    """The largest distance (sum over RGB) of a tile's background colour from the median of all tiles' colours."""
    colours = tile_colours(video, tile, object_rgb)
    return float(np.abs(colours - np.median(colours, axis=0)).sum(-1).max())


def mixed_backgrounds(video: np.ndarray, tile: tuple[int, int, int], object_rgb) -> bool:
    """Whether the tiles' background colours are nearest to more than one of the data's six backgrounds.

    Sees what the distance threshold cannot: blue and purple differ by 52 (of 765), inside real clips' texture
    spread, but every tile of 200 real clips is nearest to its own background (by a margin of 18 or more)."""
    from hpdm_cli.data.shapes import BACKGROUNDS
    colours = tile_colours(video, tile, object_rgb)
    palette = np.array(list(BACKGROUNDS.values()), float)
    nearest = np.abs(colours[:, None, :] - palette[None]).sum(-1).argmin(1)
    return len(set(nearest.tolist())) > 1


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


def real_row(shape: tuple, tile: tuple, n: int = 32) -> list:
    """The control: `n` real clips of `shape` as a table row (their tile disagreements and object areas)."""
    from hpdm_cli.data.shapes import COLOURS, render_shapes_video, shapes_attributes
    F, H, W = shape
    real = [(render_shapes_video(i, frames=F, height=H, width=W)[0],
             COLOURS[shapes_attributes(i, frames=F, height=H, width=W)["colour"]]) for i in range(n)]
    return [("real clips (control)", "", True, [tile_disagreement(v, tile, rgb) for v, rgb in real],
             [object_area(v, rgb) for v, rgb in real], [mixed_backgrounds(v, tile, rgb) for v, rgb in real])]


def print_table(rows: list, threshold: float) -> None:
    """Each (model, tiling, named, disagreements, areas, mixed) row as a markdown line; areas against the last row's."""
    real_area = float(np.mean(rows[-1][4]))
    print(f"\n| model | tiling | background in the prompt | clips | tiles disagree (> {threshold:g}) | median | max | "
          "tiles of two backgrounds | object area ÷ real | objects missing (< 0.2 of the real area) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for ckpt, overlap, named, scores, areas, mixed in rows:
        v, ar = np.array(scores), np.array(areas) / real_area
        print(f"| {Path(ckpt).name} | {overlap} | {'named' if named else 'none'} | {len(v)} | "
              f"{int((v > threshold).sum())} | {np.median(v):.0f} | {v.max():.0f} | {sum(mixed)} | {ar.mean():.2f} | "
              f"{int((ar < 0.2).sum())} |", flush=True)


def sample_prompts(model, prompts: list, seeds: list, overlap: str, *, table, bf16: bool, batch: int) -> list:
    """The clips (uint8 [F, H, W, 3]) that `model` (net, recipe, info) samples for each prompt and seed, prompt-major,
    `batch` clips per sampler call (one row of condition per clip: a GPU samples many prompts at once)."""
    import torch
    from hpdm_cli.conditioning import request_condition
    from hpdm_cli.drivers.generation import sample_videos
    net, recipe, info = model
    rows = torch.cat([request_condition(recipe, info, p, None, prompt_table=table, device=info.device,
                                        guided=True).batch(len(seeds), info.device) for p in prompts])
    return sample_videos(net, recipe, list(seeds) * len(prompts), rows, overlap=overlap, batch=batch,
                         bf16=bf16).videos


def main() -> int:
    """Sample the prompts with and without a background under each tiling; print how many clips' tiles disagree."""
    import torch
    from hpdm_cli.assets import DEFAULT_MODEL, names_packaged
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.data.shapes import COLOURS, shapes_caption
    from hpdm_cli.drivers.options import parse_seeds
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="packaged", help="weights, comma-separated (default: the packaged model)")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--seeds", default="0-1")
    ap.add_argument("--overlaps", default="none,shift-fhw")
    ap.add_argument("--threshold", type=float, default=80.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true", help="sample under bf16 autocast (a GPU's setting)")
    ap.add_argument("--batch", type=int, default=2, help="clips per sampler call (a GPU: 128 or more)")
    ap.add_argument("--prompt-table", default=None, help="precomputed prompt embeddings (no text encoder needed)")
    ap.add_argument("--sheet", type=Path, default=None)
    a = ap.parse_args()
    seeds = parse_seeds(a.seeds)
    ckpts = [c.strip() for c in a.ckpt.split(",") if c.strip()]
    rows, frames = [], []
    for ckpt in ckpts:
        model = load_generator(DEFAULT_MODEL if names_packaged(ckpt) else ckpt, a.device)
        recipe = model[1]
        tile, shape = tuple(recipe.pyramid.patch), tuple(recipe.pyramid.resolution)  # the last level's tiles
        for overlap in [o.strip() for o in a.overlaps.split(",") if o.strip()]:
            for named in (False, True):
                scores, areas, mixed, row = [], [], [], []
                triples = prompts_of(a.prompts)
                prompts = [shapes_caption(c, s, d, b if named else None) for c, s, d, b in triples]
                videos = sample_prompts(model, prompts, seeds, overlap, table=a.prompt_table, bf16=a.bf16,
                                        batch=a.batch)
                for k, ((c, *_), prompt) in enumerate(zip(triples, prompts)):
                    for video in videos[k * len(seeds):(k + 1) * len(seeds)]:
                        scores.append(tile_disagreement(video, tile, COLOURS[c]))
                        areas.append(object_area(video, COLOURS[c]))
                        mixed.append(mixed_backgrounds(video, tile, COLOURS[c]))
                        row.append(video[len(video) // 2])
                    print(f"{ckpt} {overlap:>10} {'named' if named else 'none':>6} {prompt!r}: "
                          + ", ".join(f"{v:.0f}" + "*" * m for v, m in zip(scores[-len(seeds):], mixed[-len(seeds):])),
                          flush=True)
                rows.append((ckpt, overlap, named, scores, areas, mixed))
                frames.append(np.concatenate(row, 1))
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print_table(rows + real_row(shape, tile), a.threshold)     # after each model: a cut-off run keeps its tables
        if a.sheet:
            from PIL import Image
            Image.fromarray(np.concatenate(frames, 0)).save(a.sheet)   # a row per model, tiling, prompt kind
    return 0


if __name__ == "__main__":
    sys.exit(main())
