"""Objects at the frame's border, level by level: the upper levels given a real clip's level 0, counted at the edges.

    python benchmarks/border_pixels.py CKPT [--rows 1030 1029] [--overlap shift-fhw] [--steps 32,48,24,24]
        [--real-levels 1] [--frames middle|all] [--depth 1] [--sheet PNG]

For each held-out `shapes` clip (its index in the held-out split) the model's levels 1.. are sampled
given the clip's real level 0 (with `--real-levels K`, its real levels 0..K-1: does a level overdraw
the border given a true level below it, or only pass on its input's excess?) (`HierarchicalSampler.sample(fixed={0: ...})`, on the CPU in float32,
the null condition replaced by the clip's caption when the model reads text), every level kept. For
each level it prints the object pixels of the middle frame on the frame's four border lines (top,
bottom, left, right: pixels more than 200 of 765 from the frame's median colour), generated against
the real clip box-filtered to that level (`--frames all`: summed over every frame, more pixels to count
from the same clips), and a last row per level sums every clip and side, with the level's mean absolute
difference from the real clip (0-255) over the whole frame and over its inner part (an eighth of the
frame in from every side: does a change at the border cost the middle?) and, as a control with the same
line geometry away from the border, the object pixels on the real object's outermost rows and columns
inside the frame. `--depth K` adds, per level, the same totals on the lines 1..K-1 pixels in from each
border (where along its last rows does an object widen?). Objects that touch the
border come out too wide there when a level is rarely trained at the frame's edge (docs/results.md,
sections 49-51; docs/method.md, section 3). `--find LO:HI` lists the held-out clips LO..HI-1 whose middle frame has an object on a
border line (the rows worth counting). `--sheet` writes the middle frames, level by level, beside
the real ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIDES = ("top", "bottom", "left", "right")


def object_mask(frame: np.ndarray, threshold: int = 200) -> np.ndarray:
    """Object pixels [H, W] bool of a frame [H, W, 3] uint8: more than `threshold` (of 765) from its median colour."""
    f = frame.astype(int)
    return np.abs(f - np.median(f.reshape(-1, 3), 0)).sum(-1) > threshold


def border_counts(frame: np.ndarray, threshold: int = 200, depth: int = 0) -> dict:
    """Object pixels of a frame [H, W, 3] uint8 on each side's line `depth` pixels in from the border (0: the border)."""
    mask, d = object_mask(frame, threshold), depth
    return dict(zip(SIDES, (int(mask[d].sum()), int(mask[-1 - d].sum()), int(mask[:, d].sum()), int(mask[:, -1 - d].sum()))))


def video_border_counts(video: np.ndarray, frames: str = "middle", depth: int = 0) -> dict:
    """`border_counts` of a clip [T, H, W, 3] uint8: of its middle frame, or summed over all frames ("all")."""
    if frames == "middle":
        return border_counts(video[len(video) // 2], depth=depth)
    if frames != "all":
        raise ValueError(f"frames = {frames!r}: expected 'middle' or 'all'")
    per = [border_counts(f, depth=depth) for f in video]
    return {s: sum(c[s] for c in per) for s in SIDES}


def inner_extreme_counts(gen: np.ndarray, real: np.ndarray, threshold: int = 200) -> tuple[int, int]:
    """Object pixels (generated, real) on the real object's outermost rows and columns that lie inside the frame.

    The control for the border counts: the same line geometry (an object just reaching the line) away from
    the border. Per frame of clips [T, H, W, 3] uint8, the real object's top and bottom rows and left and
    right columns are taken where they are not the frame's own border lines.
    """
    g_total = r_total = 0
    for g, r in zip(gen, real):
        mr, mg = object_mask(r, threshold), object_mask(g, threshold)
        rows, cols = np.flatnonzero(mr.any(1)), np.flatnonzero(mr.any(0))
        if not len(rows):
            continue
        H, W = mr.shape
        for i in {rows[0], rows[-1]} - {0, H - 1}:
            g_total, r_total = g_total + int(mg[i].sum()), r_total + int(mr[i].sum())
        for j in {cols[0], cols[-1]} - {0, W - 1}:
            g_total, r_total = g_total + int(mg[:, j].sum()), r_total + int(mr[:, j].sum())
    return g_total, r_total


def mean_abs_diff(gen: np.ndarray, real: np.ndarray, inner: bool = False) -> float:
    """Mean |gen - real| of two clips [T, H, W, 3] uint8, over the whole frame or its inner part (1/8 in from each side)."""
    d = np.abs(gen.astype(np.int16) - real.astype(np.int16))
    if inner:
        h, w = d.shape[1] // 8, d.shape[2] // 8
        d = d[:, h:d.shape[1] - h, w:d.shape[2] - w]
    return float(d.mean())


def main() -> None:
    """Sample the upper levels of each row given its real level 0 and print the border counts per level."""
    from PIL import Image

    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.drivers.evaluate import real_level0, render_real
    from hpdm_cli.text.tables import embed_prompts
    from hpdm_cli.drivers.generation import make_sampler, to_uint8
    from hpdm_cli.pyramid import downsample_to_level
    from hpdm_cli.sampling import level_steps
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", help="run directory, checkpoint or .safetensors file")
    ap.add_argument("--rows", type=int, nargs="+", default=[1030, 1029], help="held-out clip indices")
    ap.add_argument("--find", default=None, metavar="LO:HI", help="list the held-out clips LO..HI-1 with an object on a border")
    ap.add_argument("--overlap", default=None, help="tiling (default: the recipe's)")
    ap.add_argument("--steps", default=None, help="per-level steps, e.g. 32,48,24,24 (default: the recipe's)")
    ap.add_argument("--tables", nargs="*", default=["out/gpu/shapes_prompts_heldout.safetensors"],
                    help="prompt tables read before any text encoder")
    ap.add_argument("--real-levels", type=int, default=1, help="levels 0..K-1 taken from the real clip (default 1)")
    ap.add_argument("--frames", choices=("middle", "all"), default="middle",
                    help="count the middle frame (default) or sum over every frame")
    ap.add_argument("--depth", type=int, default=1,
                    help="also total the lines 1..K-1 pixels in from each border, per level (default 1: the border alone)")
    ap.add_argument("--sheet", default=None, help="PNG of the middle frames, level by level, beside the real ones")
    a = ap.parse_args()
    net, recipe, _ = load_generator(a.ckpt, "cpu")
    if not 1 <= a.real_levels < recipe.pyramid.num_levels:
        raise SystemExit(f"--real-levels {a.real_levels}: expected 1..{recipe.pyramid.num_levels - 1}")
    if a.depth < 1:
        raise SystemExit(f"--depth {a.depth}: expected 1 or more (1: the border lines alone)")
    R = recipe.pyramid.resolution
    if a.find:
        lo, hi = (int(v) for v in a.find.split(":"))
        for i in range(lo, hi):
            clip = render_real(1, i, R, "heldout")
            c = border_counts(clip.videos[0][R[0] // 2])
            if any(c.values()):
                print(i, clip.captions[0], c)
        return
    real = [render_real(1, i, R, "heldout") for i in a.rows]
    videos, caps = [r.videos[0] for r in real], [r.captions[0] for r in real]
    cond = embed_prompts(recipe, caps, a.tables) if recipe.model.cond == "text" else None
    sampler = make_sampler(net, recipe, device="cpu", overlap=a.overlap or recipe.pyramid.overlap, tile_batch=64)
    steps = level_steps(recipe.sample, recipe.pyramid.num_levels,
                        None if a.steps is None else [int(s) for s in a.steps.split(",")])
    clips = torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    given = {0: real_level0(videos, recipe.pyramid)}
    given.update({lv: downsample_to_level(clips, recipe.pyramid, lv).clamp(-1, 1) for lv in range(1, a.real_levels)})
    res = sampler.sample(list(range(len(a.rows))), cond, guidance=1.0, steps=steps, fixed=given)
    print(f"{a.ckpt}: offsets {recipe.pyramid.offsets!r}, tiles {a.overlap or recipe.pyramid.overlap!r}, steps {steps}, "
          f"real levels 0..{a.real_levels - 1}; object pixels on the border lines of "
          f"{'the middle frame' if a.frames == 'middle' else 'every frame'}, generated / real")
    print("| row | caption | level | " + " | ".join(SIDES) + " |")
    print("|---|---|---|" + "---|" * len(SIDES))
    tiles, totals, deep = [], {}, {}
    for k, (row, cap) in enumerate(zip(a.rows, caps)):
        clip = torch.from_numpy(videos[k][None]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        gen_row, real_row = [], []
        for lv, level in enumerate(res.videos):
            g = to_uint8(level[k:k + 1])[0]
            r = to_uint8(downsample_to_level(clip, recipe.pyramid, lv))[0]
            cg, cr = video_border_counts(g, a.frames), video_border_counts(r, a.frames)
            tg, tr, mae, inner, eg, er = totals.get(lv, (0, 0, 0.0, 0.0, 0, 0))
            xg, xr = inner_extreme_counts(g, r)
            for d in range(1, a.depth):
                dg, dr = deep.get((lv, d), (0, 0))
                deep[lv, d] = (dg + sum(video_border_counts(g, a.frames, d).values()),
                               dr + sum(video_border_counts(r, a.frames, d).values()))
            totals[lv] = (tg + sum(cg.values()), tr + sum(cr.values()), mae + mean_abs_diff(g, r) / len(a.rows),
                          inner + mean_abs_diff(g, r, True) / len(a.rows), eg + xg, er + xr)
            print(f"| {row} | {cap} | {lv} {tuple(recipe.pyramid.level_resolution(lv))} | "
                  + " | ".join(f"{cg[s]} / {cr[s]}" for s in SIDES) + " |")
            size = (R[2] * 2, R[1] * 2)
            gen_row.append(np.array(Image.fromarray(g[len(g) // 2]).resize(size, Image.NEAREST)))
            real_row.append(np.array(Image.fromarray(r[len(r) // 2]).resize(size, Image.NEAREST)))
        tiles += [np.concatenate(gen_row, 1), np.concatenate(real_row, 1)]
    for lv, (tg, tr, mae, inner, eg, er) in totals.items():
        print(f"| all | every side | {lv} | {tg} / {tr} ({tg / max(tr, 1):.2f}x); the real objects' outermost lines "
              f"inside the frame {eg} / {er} ({eg / max(er, 1):.2f}x); mean abs(generated - real) {mae:.2f} whole, "
              f"{inner:.2f} inner |")
        if a.depth > 1:
            print(f"| all | lines 1..{a.depth - 1} in | {lv} | " + "; ".join(
                f"{d}: {deep[lv, d][0]} / {deep[lv, d][1]} ({deep[lv, d][0] / max(deep[lv, d][1], 1):.2f}x)"
                for d in range(1, a.depth)) + " |")
    if a.sheet:
        Image.fromarray(np.concatenate(tiles, 0)).save(a.sheet)
        print(f"sheet: {a.sheet} (per clip: generated levels, then the real clip's levels)")


if __name__ == "__main__":
    main()
