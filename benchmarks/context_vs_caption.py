"""Do the upper levels take the background from the level below or from the caption?

    python benchmarks/context_vs_caption.py [--ckpt packaged[,WEIGHTS...]] [--clips 4] [--seeds 0-1]
        [--overlap none] [--device auto] [--bf16] [--batch 8] [--prompt-table TABLE] [--sheet PNG]

A hierarchical model's upper levels refine the level below (docs/method.md): given a real clip's level 0, they
should keep its background whatever the caption says. For `--clips` real `shapes` clips of the training split whose
colour may appear on another background, this samples the upper levels from the real level 0 (as `hpdm upscale
--from-level 1` does) under three captions: the clip's own, one naming *another* background (the conflict), and
one naming none (the short caption); then reads every last-level tile's background colour (the median of its
pixels away from the object's colour, benchmarks/background_tiles.py) and counts the tiles nearer the real
background than the other one. A model that follows its context keeps ~100% under all three captions; one that
reads the background from the caption drops towards 0% under the conflicting one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from background_tiles import tile_colours  # noqa: E402

CAPTIONS = ("own", "other background", "no background")


def conflict_clips(n: int, resolution) -> list:
    """`n` (video, attributes, other background) of the training split whose colour may appear on another background."""
    from hpdm_cli.data.shapes import _allowed_backgrounds, render_shapes_video, shapes_attributes
    T, H, W = resolution
    out, i = [], 0
    while len(out) < n and i < 10000:
        a = shapes_attributes(i, frames=T, height=H, width=W, split="train")
        others = [b for b in _allowed_backgrounds(a["colour"]) if b != a["background"]]
        if others:
            out.append((render_shapes_video(i, frames=T, height=H, width=W, split="train")[0], a,
                        others[len(out) % len(others)]))
        i += 1
    return out


def kept_share(video: np.ndarray, tile, object_rgb, real_rgb, other_rgb) -> float:
    """The share of `video`'s last-level tiles whose background colour is nearer `real_rgb` than `other_rgb`."""
    colours = tile_colours(video, tile, object_rgb)
    near_real = np.abs(colours - np.asarray(real_rgb)).sum(-1) < np.abs(colours - np.asarray(other_rgb)).sum(-1)
    return float(near_real.mean()) if len(colours) else float("nan")


def main() -> int:
    """Sample each model's upper levels from real level 0s under the three captions; print the kept shares."""
    import torch
    from hpdm_cli.assets import DEFAULT_MODEL, names_packaged
    from hpdm_cli.checkpoint import load_generator
    from hpdm_cli.conditioning import request_condition
    from hpdm_cli.data.shapes import BACKGROUNDS, COLOURS, shapes_caption
    from hpdm_cli.drivers.evaluate import real_level0
    from hpdm_cli.drivers.generation import sample_videos
    from hpdm_cli.drivers.options import parse_seeds
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="packaged", help="weights, comma-separated (default: the packaged model)")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--seeds", default="0-1")
    ap.add_argument("--overlap", default="none")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--batch", type=int, default=8, help="clips per sampler call")
    ap.add_argument("--prompt-table", default=None, help="precomputed prompt embeddings (no text encoder needed)")
    ap.add_argument("--sheet", type=Path, default=None, help="middle frames: a row per model and caption")
    a = ap.parse_args()
    seeds = parse_seeds(a.seeds)
    print("| model | caption | clips | tiles nearer the real background (mean) | clips with every tile kept |")
    print("|---|---|---|---|---|")
    sheet = []
    for ckpt in [c.strip() for c in a.ckpt.split(",") if c.strip()]:
        net, recipe, info = load_generator(DEFAULT_MODEL if names_packaged(ckpt) else ckpt, a.device)
        clips = conflict_clips(a.clips, recipe.pyramid.resolution)
        level0 = real_level0([v for v, _, _ in clips], recipe.pyramid)
        for kind in CAPTIONS:
            caps = [shapes_caption(at["colour"], at["shape"], at["direction"],
                                   {"own": at["background"], "other background": other}.get(kind))
                    for _, at, other in clips]
            rows = torch.cat([request_condition(recipe, info, c, None, prompt_table=a.prompt_table,
                                                device=info.device).batch(len(seeds), info.device) for c in caps])
            fixed = {0: level0.repeat_interleave(len(seeds), 0).to(info.device)}
            videos = sample_videos(net, recipe, list(seeds) * len(clips), rows, overlap=a.overlap, batch=a.batch,
                                   bf16=a.bf16, fixed=fixed, guidance=1.0).videos
            shares = [kept_share(videos[k * len(seeds) + s], tuple(recipe.pyramid.patch), COLOURS[at["colour"]],
                                 BACKGROUNDS[at["background"]], BACKGROUNDS[other])
                      for k, (_, at, other) in enumerate(clips) for s in range(len(seeds))]
            print(f"| {Path(ckpt).name} | {kind} | {len(shares)} | {np.nanmean(shares):.0%} | "
                  f"{sum(s == 1.0 for s in shares)} |", flush=True)
            sheet.append(np.concatenate([v[len(v) // 2] for v in videos], 1))
        del net
    if a.sheet:
        from PIL import Image
        Image.fromarray(np.concatenate(sheet, 0)).save(a.sheet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
