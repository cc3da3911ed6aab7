"""Each upper level sampled given the real lower levels: does it draw as much fine detail as the real level?

    python benchmarks/level_sharpness.py CKPT [--num 16] [--overlap none] [--tables out/gpu/shapes_prompts_tokens.safetensors]

For held-out `shapes` prompts, level l (l >= 1) is sampled with levels 0..l-1 fixed to the real
clips' (box-filtered to each level's size, as training extracts them), and its high-frequency
energy (mean absolute spatial gradient and Laplacian) is printed beside the real level l's. A level
that learnt blurred patches draws less than the real one (docs/results.md, section 26); unoverlapped
tile seams and leftover noise add edges, so a ratio above 1 says little.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpdm_cli.checkpoint import load_generator  # noqa: E402
from hpdm_cli.drivers.evaluate import condition_rows, render_real  # noqa: E402
from hpdm_cli.text.tables import embed_prompts  # noqa: E402
from hpdm_cli.drivers.generation import make_sampler  # noqa: E402
from hpdm_cli.pyramid import downsample_to_level  # noqa: E402


def detail(x: torch.Tensor) -> tuple[float, float]:
    """Mean |spatial gradient| and mean |5-point Laplacian| of videos [..., H, W] in [-1, 1]."""
    grad = ((x[..., 1:] - x[..., :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()) / 2
    lap = (4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:])
    return float(grad), float(lap.abs().mean())


def main() -> None:
    """Print one row per upper level: generated against real detail."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("--num", type=int, default=16, help="held-out prompts")
    ap.add_argument("--overlap", default="none")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tables", default="out/gpu/shapes_prompts_tokens.safetensors")
    args = ap.parse_args()
    net, recipe, info = load_generator(args.ckpt, args.device)
    pyr = recipe.pyramid
    real = render_real(args.num, 0, tuple(pyr.resolution), "heldout")
    cond = condition_rows(recipe, real, lambda caps: embed_prompts(recipe, caps, args.tables.split(",")))
    clips = torch.from_numpy(np.stack(real.videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    levels = [downsample_to_level(clips, pyr, l).clamp(-1, 1).to(info.device) for l in range(pyr.num_levels)]
    sampler = make_sampler(net, recipe, device=info.device, overlap=args.overlap, tile_batch=64)
    steps = list(recipe.sample.level_steps) or None
    print(f"{args.ckpt}: {args.num} held-out prompts, overlap {args.overlap}")
    print("| level (given real 0..l-1) | |gradient| generated / real | |Laplacian| generated / real | seconds |")
    print("|---|---|---|---|")
    for l in range(1, pyr.num_levels):
        t0 = time.time()
        res = sampler.sample(list(range(args.num)), cond.to(info.device), levels=l + 1, steps=steps,
                             fixed={k: levels[k] for k in range(l)})
        (gg, gl), (rg, rl) = detail(res.videos[-1].float().clamp(-1, 1)), detail(levels[l].float())
        print(f"| {l} | {gg:.4f} / {rg:.4f} ({gg / rg:.2f}) | {gl:.4f} / {rl:.4f} ({gl / rl:.2f}) | "
              f"{time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
