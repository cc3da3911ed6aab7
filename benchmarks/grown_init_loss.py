"""Loss per level of a pyramid grown from a checkpoint, before any training: what the new level can do at start.

    python benchmarks/grown_init_loss.py [--recipe recipes/shapes128-grown.toml] [--from packaged] \
        [--videos 32] [--repeats 2] [--loads "linear" "[1,1,2,2,4,4]"]

For each model.load and for the new levels' tables (`level_embed`, `level_token`) as `init_from`
leaves them (copied from the checkpoint's finest level) and redrawn as a fresh model draws them,
builds the grown model, loads the checkpoint (`train.init_from`) and prints the EDM loss of every
level at the recipe's training noise on patch hierarchies of training-split `shapes` videos. Every
row sees the same offsets, sigmas and noise (docs/results.md, section 24). The condition is the null
one (no text encoder needed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpdm_cli.data.shapes import render_shapes_video  # noqa: E402
from hpdm_cli.diffusion.edm import edm_loss  # noqa: E402
from hpdm_cli.pyramid import extract_patches, sample_nested_offsets  # noqa: E402
from hpdm_cli.recipe import load_recipe  # noqa: E402
from hpdm_cli.train.init_from import init_from_checkpoint  # noqa: E402
from hpdm_cli.train.step import build_model  # noqa: E402


def level_losses(recipe, start: str, videos: torch.Tensor, repeats: int, fresh_tables: bool) -> list[float]:
    """Mean loss per level of `recipe`'s model initialised from `start`, over `repeats` passes of `videos`."""
    net = build_model(recipe)
    report = init_from_checkpoint(net, start)
    if fresh_tables:
        with torch.no_grad():
            for name in report.partial:                   # the grown levels' rows as a fresh model draws them
                table = getattr(net, name)
                table[report.base_levels:] = torch.randn_like(table[report.base_levels:]) * 0.02
    net.eval()
    g = torch.Generator().manual_seed(1)
    total, count = torch.zeros(recipe.pyramid.num_levels), 0
    with torch.no_grad():
        for _ in range(repeats):
            for i in range(0, len(videos), 8):
                batch = videos[i:i + 8]
                off = sample_nested_offsets(recipe.pyramid, len(batch), generator=g)
                out = edm_loss(net, extract_patches(batch, recipe.pyramid, off), off, recipe.diffusion, None,
                               generator=g)
                total += out.per_level
                count += 1
    return (total / count).tolist()


def main() -> None:
    """Print the per-level loss table for each load and table start."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/shapes128-grown.toml")
    ap.add_argument("--from", dest="start", default="packaged", help="checkpoint to grow (train.init_from)")
    ap.add_argument("--videos", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--loads", nargs="+", default=["linear", "[1,1,2,2,4,4]"])
    args = ap.parse_args()
    base = load_recipe(args.recipe)
    T, H, W = base.pyramid.resolution
    clips = [render_shapes_video(i, frames=T, height=H, width=W, split="train")[0] for i in range(args.videos)]
    videos = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    print("| load | new levels' tables | " + " | ".join(f"level {l}" for l in range(base.pyramid.num_levels)) + " |")
    print("|---|---|" + "---|" * base.pyramid.num_levels)
    for load in args.loads:
        load_value = load if load.startswith("[") else f'"{load}"'
        recipe = load_recipe(args.recipe, [f"model.load={load_value}"])
        for fresh in (True, False):
            losses = level_losses(recipe, args.start, videos, args.repeats, fresh)
            print(f"| {load} | {'random' if fresh else 'from the finest base level'} | "
                  + " | ".join(f"{x:.4f}" for x in losses) + " |", flush=True)


if __name__ == "__main__":
    main()
