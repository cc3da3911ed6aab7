"""Upper levels from one generated level 0 shown at a higher sigma: does conditioning augmentation at sampling add texture?

    python benchmarks/context_sigma_sampling.py [CKPT] --num 8 --sigmas 0.002 0.1 0.2 0.4

Cascaded diffusion models (Ho et al. 2022) sample a super-resolution stage with its low-resolution
input noised, so that the stage redraws detail the low stage got wrong. An HPDM pyramid is trained
with lower levels at every sigma of their log-normal (docs/method.md, "The joint loss"), so its
upper levels can be given the finished level 0 at any sigma: `diffusion.context_sigma` is the one the
sampler uses. Level 0 is sampled once for `--num` held-out `shapes` prompts (the recipe's sampler);
levels 1.. are then sampled from it without tile overlap for each sigma, and the full clips are
scored: background stripes (real clips beside them), faithfulness, object area / real
(docs/results.md, section 30). `--sheet PNG` writes frame 8 of every clip, one row per sigma.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpdm_cli.checkpoint import load_generator  # noqa: E402
from hpdm_cli.drivers.evaluate import condition_rows, render_real  # noqa: E402
from hpdm_cli.text.tables import embed_prompts  # noqa: E402
from hpdm_cli.drivers.generation import make_sampler, to_uint8  # noqa: E402
from hpdm_cli.eval.faithfulness import score_clips  # noqa: E402
from hpdm_cli.eval.texture import stripe_summary  # noqa: E402


def main() -> None:
    """One table row per context sigma: stripes of the clip and of level 1, faithfulness, size, seconds."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt", nargs="?", default="hpdm_cli/assets/shapes-t2v.safetensors")
    ap.add_argument("--num", type=int, default=8)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.002, 0.1, 0.2, 0.4])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tables", default="out/gpu/shapes_prompts_tokens.safetensors")
    ap.add_argument("--sheet", help="PNG: frame 8 of every clip, one row per sigma")
    args = ap.parse_args()
    net, recipe, info = load_generator(args.ckpt, args.device)
    real = render_real(args.num, 0, tuple(recipe.pyramid.resolution), "heldout")
    cond = condition_rows(recipe, real, lambda caps: embed_prompts(recipe, caps, args.tables.split(",")))
    seeds = list(range(args.num))
    sampler = lambda rec: make_sampler(net, rec, device=info.device, overlap="none", tile_batch=64)  # noqa: E731
    level0 = sampler(recipe).sample(seeds, cond, levels=1).videos[0]
    real_area = score_clips(real.videos, real.captions)["area"]
    print(f"{args.ckpt}: {args.num} held-out prompts; stripes: real {stripe_summary(real.videos)['mean']:.3f}, "
          f"generated level 0 {stripe_summary(to_uint8(level0))['mean']:.3f}")
    print("| context sigma | stripes | level-1 stripes | colour / shape / direction | area ÷ real | seconds |")
    print("|---|---|---|---|---|---|")
    frames = []
    for s in args.sigmas:
        rec = dataclasses.replace(recipe, diffusion=dataclasses.replace(recipe.diffusion, context_sigma=s))
        t0 = time.time()
        res = sampler(rec).sample(seeds, cond, fixed={0: level0})
        clips = to_uint8(res.videos[-1])
        sc = score_clips(clips, real.captions)
        print(f"| {s:g} | {stripe_summary(clips)['mean']:.3f} | {stripe_summary(to_uint8(res.videos[1]))['mean']:.3f} | "
              f"{100 * sc['colour']:.0f} / {100 * sc['shape']:.0f} / {100 * sc['direction']:.0f}% | "
              f"{sc['area'] / real_area:.3f} | {time.time() - t0:.0f} |", flush=True)
        frames.append(np.concatenate([c[min(8, len(c) - 1)] for c in clips], axis=1))
    if args.sheet:
        from PIL import Image
        Image.fromarray(np.concatenate(frames, axis=0)).save(args.sheet)


if __name__ == "__main__":
    main()
