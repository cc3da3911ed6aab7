"""Loss of a model's intermediate levels against the sub-pixel phase of their patches: is it trained on what sampling shows it?

    python benchmarks/offset_phase_loss.py CKPT [--videos 64] [--repeats 6] [--phases 0 0.25 0.5 0.75] [--axes hw]

Sampling places every tile on its level's pixel grid (docs/method.md, section 9): phase 0. With
`pyramid.offsets = "continuous"` (the paper's scheme) training places an intermediate level's patch
anywhere, so most training patches are trilinearly resampled between pixels, i.e. slightly blurred.
For each intermediate level l this draws grid-aligned patch hierarchies of training-split `shapes`
videos, moves level l alone by a fraction t of one of its pixels along both spatial axes (`--axes
t`: along time, by a fraction of a frame; `thw`: all three), and prints
the EDM loss of level l at the checkpoint's training noise. Every phase sees the same videos,
offsets of the other levels, sigmas and noise, and only hierarchies where level l can move by a
whole pixel and stay nested count, so the rows differ by the phase alone. A model that sampling
serves well has its lowest loss at phase 0; one trained on resampled patches has it near 0.5
(docs/results.md, section 25). The condition is the null one (no text encoder needed).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpdm_cli.checkpoint import load_generator  # noqa: E402
from hpdm_cli.data.shapes import render_shapes_video  # noqa: E402
from hpdm_cli.diffusion.edm import draw_noise, edm_loss  # noqa: E402
from hpdm_cli.pyramid import extract_patches, level_scales, sample_nested_offsets  # noqa: E402


def movable(offsets: torch.Tensor, scales: torch.Tensor, level: int, pixel: torch.Tensor) -> torch.Tensor:
    """[B] True where `level` can move by up to `pixel` [3] (one of its pixels on the moved axes) and stay nested."""
    lo, hi = offsets[:, level - 1], offsets[:, level - 1] + scales[level - 1]
    ok = (offsets[:, level] + pixel + scales[level] <= hi + 1e-9).all(-1) & (offsets[:, level] >= lo).all(-1)
    if level + 1 < offsets.shape[1]:
        ok &= (offsets[:, level + 1] >= offsets[:, level] + pixel - 1e-9).all(-1)
    return ok


def phase_losses(net, recipe, videos: torch.Tensor, phases: list[float], repeats: int, axes: str = "hw",
                 seed: int = 0) -> dict:
    """{level: {phase: mean loss}} for every intermediate level, on the same draws for every phase."""
    pyr = recipe.pyramid
    grid_pyr = dataclasses.replace(pyr, offsets="grid")
    free_pyr = dataclasses.replace(pyr, offsets="continuous")
    scales = level_scales(pyr, "cpu").double()
    g = torch.Generator().manual_seed(seed)
    sums = {l: {t: 0.0 for t in phases} for l in range(1, pyr.num_levels - 1)}
    counts = {l: 0.0 for l in sums}
    with torch.no_grad():
        for _ in range(repeats):
            for i in range(0, len(videos), 16):
                batch = videos[i:i + 16]
                base = sample_nested_offsets(grid_pyr, len(batch), generator=g).double()
                shape = (len(batch), pyr.num_levels, batch.shape[1], *pyr.patch)   # the patch hierarchy's
                draw = draw_noise(recipe.diffusion, shape, conditional=False, generator=g)
                for l in sums:
                    pixel = torch.tensor([float(a in axes) for a in "thw"], dtype=torch.float64) / torch.tensor(
                        pyr.level_resolution(l), dtype=torch.float64)
                    ok = movable(base, scales, l, pixel)
                    if not ok.any():
                        continue
                    w = draw.weight * ok[:, None].float()
                    counts[l] += float(w[:, l].sum())
                    for t in phases:
                        off = base.clone()
                        off[:, l] += t * pixel
                        p = grid_pyr if t == 0 else free_pyr
                        out = edm_loss(net, extract_patches(batch, p, off.float()), off.float(), recipe.diffusion,
                                       None, draw=dataclasses.replace(draw, weight=w))
                        sums[l][t] += float(out.per_level[l]) * float(w[:, l].sum())
    return {l: {t: s / max(counts[l], 1.0) for t, s in row.items()} for l, row in sums.items()}


def main() -> None:
    """Print the loss table: one row per phase, one column per intermediate level."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", help="run directory, checkpoint or .safetensors file")
    ap.add_argument("--videos", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--phases", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    ap.add_argument("--axes", default="hw", choices=["hw", "t", "thw"], help="the axes along which the level moves")
    args = ap.parse_args()
    net, recipe, _ = load_generator(args.ckpt, "cpu")
    if recipe.pyramid.num_levels < 3:
        raise SystemExit("offset_phase_loss: the model has no intermediate level (it needs 3 or more)")
    T, H, W = recipe.pyramid.resolution
    clips = [render_shapes_video(i, frames=T, height=H, width=W, split="train")[0] for i in range(args.videos)]
    videos = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    table = phase_losses(net, recipe, videos, args.phases, args.repeats, args.axes)
    levels = sorted(table)
    print(f"offsets {recipe.pyramid.offsets}; moved along {args.axes}; " + "; ".join(f"level {l}: trained on {recipe.pyramid.level_resolution(l)}" for l in levels))
    print("| phase (pixels of the level) | " + " | ".join(f"loss level {l}" for l in levels) + " |")
    print("|---|" + "---|" * len(levels))
    for t in args.phases:
        print(f"| {t:g}{' (sampling)' if t == 0 else ''} | " + " | ".join(f"{table[l][t]:.4f}" for l in levels) + " |")


if __name__ == "__main__":
    main()
